import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from grpo.data.errors import DatasetError
from grpo.data.gsm8k import DEFAULT_SYSTEM_PROMPT, load_gsm8k
from grpo.data.prompts import load_prompt_rows
from grpo.rewards.builtin import accuracy
from grpo.rewards.extract import extract_answer, extract_number, parse_number

REAL_DIR = Path("/work/shared/data/gsm8k")

TINY = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": " How many grams? ", "answer": "1000 + 600 = 1,600 grams\n#### 1,600"},
]


def write(path: Path, lines: Sequence[object]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def test_tiny_file_as_chat(tmp_path: Path) -> None:
    rows = load_gsm8k(write(tmp_path / "tiny.jsonl", TINY))
    assert rows[0] == {
        "prompt": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": "Tom has 3 apples and buys 4. How many?"},
        ],
        "answer": "7",
        "solution": "3 + 4 = <<3+4=7>>7\n#### 7",
        "question": "Tom has 3 apples and buys 4. How many?",
    }
    assert rows[1]["answer"] == "1600"  # thousands separator removed
    assert rows[1]["question"] == "How many grams?"
    assert "<think>" in DEFAULT_SYSTEM_PROMPT and "<answer>" in DEFAULT_SYSTEM_PROMPT


def test_tiny_file_as_plain_text_and_without_system_prompt(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.jsonl", TINY)
    plain = load_gsm8k(path, as_chat=False, system_prompt="Think, then answer.")
    assert plain[0]["prompt"] == (
        "Think, then answer.\n\nUser: Tom has 3 apples and buys 4. How many?\nAssistant:"
    )
    bare = load_gsm8k(path, system_prompt=None)
    assert bare[0]["prompt"] == [{"role": "user", "content": TINY[0]["question"]}]


def test_rows_pass_the_generic_loader(tmp_path: Path) -> None:
    rows = load_gsm8k(write(tmp_path / "tiny.jsonl", TINY))
    saved = write(tmp_path / "rows.jsonl", rows)
    assert load_prompt_rows(saved, required_columns=["answer"]) == rows


MALFORMED = [
    ({"question": "q", "answer": "no final line"}, "column 'answer' has no '####' line"),
    ({"question": "q", "answer": "x\n#### seven"}, "'seven' after '####' is not a number"),
    ({"question": "q", "answer": "x\n####"}, "'' after '####' is not a number"),
    ({"answer": "x\n#### 1"}, "missing column 'question' (columns present: answer)"),
    ({"question": "", "answer": "x\n#### 1"}, "column 'question' must be a non-empty string"),
    ({"question": "q", "answer": 7}, "column 'answer' must be a non-empty string"),
    ('{"question": "q"', "invalid JSON"),
]


@pytest.mark.parametrize(("line", "problem"), MALFORMED)
def test_malformed_rows_name_file_and_line(tmp_path: Path, line: object, problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", [TINY[0], "", line])
    with pytest.raises(DatasetError) as err:
        load_gsm8k(path)
    assert str(err.value).startswith(f"{path} line 3: ")
    assert problem in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        load_gsm8k(tmp_path / "absent.jsonl")


@pytest.mark.skipif(not (REAL_DIR / "test.jsonl").is_file(), reason="GSM8K data not present")
def test_real_test_split() -> None:
    rows = load_gsm8k(REAL_DIR / "test.jsonl")
    assert len(rows) == 1319
    golds = [row["answer"] for row in rows]

    # The gold answer written in answer tags scores 1.0 on every row.
    completions = [f"<think>done</think><answer>{gold}</answer>" for gold in golds]
    prompts = [row["prompt"] for row in rows]
    assert accuracy(prompts, completions, answer=golds) == [1.0] * 1319

    # The gold read back from the solution text (its "#### N" line) agrees on every row.
    agree = sum(
        parse_number(extract_answer(row["solution"])) == float(row["answer"]) for row in rows
    )
    assert agree == 1319

    # Without the "####" line only the last-number fallback is left; it agrees on 1282 rows
    # (97%): the reasoning often ends with a number that is not the answer ("...in 12 days").
    reasoning_only = sum(
        extract_number(row["solution"].rpartition("####")[0]) == float(row["answer"])
        for row in rows
    )
    assert reasoning_only >= 1282


@pytest.mark.skipif(not (REAL_DIR / "train.jsonl").is_file(), reason="GSM8K data not present")
def test_real_train_split_parses() -> None:
    rows = load_gsm8k(REAL_DIR / "train.jsonl", as_chat=False)
    assert len(rows) == 7473
    assert all(parse_number(row["answer"]) is not None for row in rows)
