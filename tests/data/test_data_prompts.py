import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo.data.errors import DatasetError
from grpo.data.prompts import load_prompt_rows, prompt_problem

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
ROWS: list[dict[str, Any]] = [
    {"prompt": "What is 1+1?", "answer": "2", "id": 0},
    {"prompt": CHAT, "answer": "4", "id": 1},
]


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Each item is a row dict (dumped as JSON) or a raw line string."""
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def error_of(source: Path, **kwargs: Any) -> DatasetError:
    with pytest.raises(DatasetError) as err:
        load_prompt_rows(source, **kwargs)
    return err.value


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_all_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], "", "   ", ROWS[1]])
    assert load_prompt_rows(path, required_columns=["answer"]) == ROWS
    assert load_prompt_rows(str(path)) == ROWS  # str sources too


def test_jsonl_missing_required_column_names_file_line_and_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [ROWS[0], "", {"prompt": "p", "id": 7}],  # line 3 lacks "answer"
    )
    err = error_of(path, required_columns=["answer"])
    assert str(err) == f"{path} line 3: missing column 'answer' (columns present: prompt, id)"


def test_jsonl_missing_prompt_column_and_custom_prompt_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "hi", "answer": "1"}])
    err = error_of(path)
    assert f"{path} line 1: missing column 'prompt' (columns present: question, answer)" in str(err)
    assert "set prompt_column" in str(err)
    assert load_prompt_rows(path, prompt_column="question") == [{"question": "hi", "answer": "1"}]


def test_jsonl_malformed_json_and_non_objects(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], '{"prompt": "x",', "[1, 2]", ROWS[1]])
    err = error_of(path)
    assert err.problems == [
        f"{path} line 2: invalid JSON (Expecting property name enclosed in double quotes "
        "at column 16)",
        f"{path} line 3: expected a JSON object, got list",
    ]


def test_jsonl_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    assert f"{path} line 2: not valid UTF-8" in str(error_of(path))


BAD_PROMPTS = [
    ("", "is an empty string"),
    ("   ", "is an empty string"),
    ([], "is an empty list of messages"),
    (None, "is null"),
    (42, "must be a string or a list of chat messages"),
    (["hi"], "message 0 is a str, not a dict with 'role' and 'content'"),
    ([{"content": "hi"}], "message 0 has no 'role' string (keys: content)"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], "message 1 (user) has no 'content'"),
    ([{"role": "user", "content": ["a"]}], "has no 'content' string (got list)"),
]


@pytest.mark.parametrize(("prompt", "problem"), BAD_PROMPTS)
def test_bad_prompt_values(tmp_path: Path, prompt: Any, problem: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], {"prompt": prompt}])
    message = str(error_of(path))
    assert message.startswith(f"{path} line 2: column 'prompt' ")
    assert problem in message


def test_good_prompt_values() -> None:
    assert prompt_problem("x") is None
    assert prompt_problem(CHAT) is None
    # Extra keys (datasets adds None for fields other messages have) are fine.
    assert prompt_problem([{"role": "user", "content": "", "name": None}]) is None


def test_every_row_is_checked_and_message_is_capped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "many.jsonl", [{"prompt": ""} for _ in range(8)])
    err = error_of(path, required_columns=["answer"])
    # Each of the 8 rows has 2 problems: empty prompt and missing answer.
    assert len(err.problems) == 16
    lines = str(err).splitlines()
    assert len(lines) == 6
    assert lines[0] == f"{path} line 1: column 'prompt' is an empty string"
    assert lines[1].startswith(f"{path} line 1: missing column 'answer'")
    assert lines[-1] == f"... and 11 more problems in {path}"


def test_missing_file_empty_file_and_unknown_type(tmp_path: Path) -> None:
    assert "file not found" in str(error_of(tmp_path / "absent.jsonl"))
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    assert str(error_of(empty)) == f"{empty}: the dataset has no rows"
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt\nhi\n")
    assert "unsupported file type '.csv'" in str(error_of(csv))


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 1+1?", "answer": "2", "id": 0},
        {"prompt": "What is 2+2?", "answer": "4", "id": 1},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_prompt_rows(path, required_columns=["answer"]) == rows

    chat_rows = [{"prompt": CHAT, "answer": "4"}]
    chat_path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(chat_rows), chat_path)
    assert load_prompt_rows(chat_path) == chat_rows


def test_parquet_errors_name_row_index(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    err = error_of(path, required_columns=["answer", "label"])
    assert err.problems == [
        f"{path} row 0 (0-based): missing column 'label' (columns present: prompt, answer)",
        f"{path} row 1 (0-based): column 'answer' is null",
        f"{path} row 1 (0-based): missing column 'label' (columns present: prompt, answer)",
    ]


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet")
    assert str(error_of(path)).startswith(f"{path}: cannot read as Parquet")


# --- Hugging Face datasets -------------------------------------------------------------------


def test_save_to_disk_round_trip(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": CHAT, "answer": "4"}, {"prompt": CHAT, "answer": "5"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert load_prompt_rows(tmp_path / "single", required_columns=["answer"]) == rows

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows),
            "test": datasets.Dataset.from_list([{"prompt": CHAT, "answer": "9"}]),
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_prompt_rows(tmp_path / "dict", split="test") == [{"prompt": CHAT, "answer": "9"}]
    err = error_of(tmp_path / "dict", split="validation")
    assert "no split 'validation'" in str(err) and "train, test" in str(err)


def test_save_to_disk_errors_name_row_index(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "", "answer": "2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    err = error_of(tmp_path / "saved")
    assert str(err) == f"{tmp_path / 'saved'} row 1 (0-based): column 'prompt' is an empty string"


def test_load_dataset_fallback_on_a_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    # Keep datasets' cache inside the test folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:1])
    assert load_prompt_rows(folder) == ROWS[:1]
    err = error_of(tmp_path / "nothing_here")
    assert "datasets.load_dataset(" in str(err) and "failed" in str(err)


def test_datasets_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    err = error_of(tmp_path / "some_folder")
    assert "'datasets' library, which is not installed" in str(err)
    # JSONL and Parquet do not need it.
    assert load_prompt_rows(write_jsonl(tmp_path / "ok.jsonl", ROWS)) == ROWS
