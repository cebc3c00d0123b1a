"""Every class of bad input through the real command line (``grpo train`` / ``grpo eval``).

Each case asserts the exit code (2: bad input, 1: a failure while running), that no traceback
is printed, and that the last lines name the culprit (key, file, line, column, function). The
cases that are input mistakes also check that the run stopped before any heavy work: the run
directory was never made (setup makes it only after ``preflight`` passed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grpo.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
# one short step on the shipped model with the transformers engine
SMALL = [
    "train.steps=1",
    "train.batch_size=8",
    "data.num_eval_prompts=4",
    "train.eval_every=0",
    "log.progress_bar=false",
    "log.plot=false",
    "rollout.engine=transformers",
    "rollout.static_decode=false",  # the eager engine: no compile time per test
    "rollout.max_new_tokens=8",
]
ARITH = ["data.num_train_prompts=16"]  # the built-in task, small


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check(code: int, text: str, expected: int, *culprits: str, lines: int = 3) -> None:
    assert code == expected, text
    assert "Traceback" not in text, text
    tail = text.strip().splitlines()[-lines:]
    joined = "\n".join(tail)
    assert any(line.startswith("error: ") for line in tail), text
    for culprit in culprits:
        assert culprit in joined, (culprit, text)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def train(capsys, out: Path, *args: str) -> tuple[int, str]:
    return run(capsys, "train", *SMALL, f"train.output_dir={out}", *args)


def file_task(path: Path) -> list[str]:
    return ["data.task=file", f"data.train_path={path}"]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rewards_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(source))
    return path


GOOD_ROWS = [{"prompt": f"Q: {i}+1\n", "answer": str(i + 1)} for i in range(8)]


# ---- data files ----------------------------------------------------------------------------


def test_missing_data_file(capsys, tmp_path, out):
    code, text = train(capsys, out, *file_task(tmp_path / "nope.jsonl"))
    check(code, text, 2, "nope.jsonl", "file not found")
    assert not out.exists()


def test_data_path_is_a_directory(capsys, tmp_path, out):
    (tmp_path / "data.jsonl").mkdir()
    code, text = train(capsys, out, *file_task(tmp_path / "data.jsonl"))
    check(code, text, 2, "data.jsonl", "is a directory")


def test_malformed_jsonl_line_names_line_and_column(capsys, tmp_path, out):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "Q: 1+1\\n", "answer": "2"}\n{"prompt": "Q: 2+2", "answer": }\n')
    code, text = train(capsys, out, *file_task(path))
    # the value missing after "answer": where the closing brace is, the 32nd character
    check(code, text, 2, "data.jsonl line 2", "invalid JSON", "column 32")
    assert not out.exists()


def test_empty_data_file(capsys, tmp_path, out):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "empty.jsonl", "no rows")


def test_unsupported_data_format(capsys, tmp_path, out):
    path = tmp_path / "data.csv"
    path.write_text("prompt,answer\nQ: 1+1,2\n")
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "data.csv", "unsupported file type '.csv'")


def test_corrupt_parquet(capsys, tmp_path, out):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "data.parquet", "cannot read as Parquet")


def test_missing_prompt_column(capsys, tmp_path, out):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "Q", "answer": "1"}] * 8)
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "data.jsonl line 1", "missing column 'prompt'", "question")


def test_missing_column_a_reward_needs(capsys, tmp_path, out):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Q: 1+1\n"}] * 8)
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "data.jsonl line 1", "missing column 'answer'")


def test_prompt_of_the_wrong_type(capsys, tmp_path, out):
    path = write_jsonl(tmp_path / "data.jsonl", [*GOOD_ROWS[:3], {"prompt": 7, "answer": "7"}])
    code, text = train(capsys, out, *file_task(path))
    check(code, text, 2, "data.jsonl line 4", "column 'prompt'", "got int")


def test_answer_column_the_accuracy_reward_cannot_read(capsys, tmp_path, out):
    rows = [{"prompt": f"Q: {i}\n", "answer": [i, i + 1]} for i in range(8)]
    code, text = train(capsys, out, *file_task(write_jsonl(tmp_path / "data.jsonl", rows)))
    check(code, text, 2, "data.jsonl row 0", "column 'answer'", "accuracy")


def test_answer_column_of_mixed_kinds(capsys, tmp_path, out):
    rows = [*GOOD_ROWS[:4], {"prompt": "Q: 9\n", "answer": {"value": 9}}]
    code, text = train(capsys, out, *file_task(write_jsonl(tmp_path / "data.jsonl", rows)))
    check(code, text, 2, "data.jsonl line 5", "column 'answer' is a mapping", "line 1")


def test_chat_prompts_with_a_tokenizer_without_chat_template(capsys, tmp_path, out):
    rows = [{"prompt": [{"role": "user", "content": "Q: 1+1"}], "answer": "2"}] * 8
    code, text = train(capsys, out, *file_task(write_jsonl(tmp_path / "chat.jsonl", rows)))
    check(code, text, 2, "chat.jsonl row 0", "no chat template")
    assert not out.exists()


def test_too_few_prompts_for_one_step(capsys, tmp_path, out):
    path = write_jsonl(tmp_path / "data.jsonl", GOOD_ROWS[:1])
    code, text = train(capsys, out, *file_task(path), "train.batch_size=16")
    check(code, text, 2, "data.jsonl has 1 prompts", "train.batch_size")


# ---- reward functions ----------------------------------------------------------------------


def reward_cfg(spec: str, extra: str = "") -> str:
    return f"rewards=[{{name: '{spec}', weight: 1.0{extra}}}]"


def test_missing_reward_file(capsys, tmp_path, out):
    spec = f"{tmp_path / 'nope.py'}:score"
    code, text = train(capsys, out, *ARITH, reward_cfg(spec))
    check(code, text, 2, "rewards[0]", "nope.py", "not found")
    assert not out.exists()


def test_missing_reward_function_in_the_file(capsys, tmp_path, out):
    path = rewards_file(tmp_path, "def scor(prompts, completions, **kw):\n    return [0.0]\n")
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:score"))
    check(code, text, 2, "rewards[0]", "no attribute 'score'", "scor")


def test_reward_that_is_not_callable(capsys, tmp_path, out):
    path = rewards_file(tmp_path, "score = 3\n")
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:score"))
    check(code, text, 2, "rewards[0]", "'score' is not callable")


def test_reward_with_a_kwarg_it_does_not_take(capsys, tmp_path, out):
    path = rewards_file(tmp_path, "def score(prompts, completions):\n    return [0.0]\n")
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:score", ", kwargs: {scale: 2}"))
    check(code, text, 2, "rewards[0]", "kwargs ['scale'] are not parameters of score")


def test_reward_that_raises_is_found_before_training(capsys, tmp_path, out):
    path = rewards_file(
        tmp_path,
        """\
        def score(prompts, completions, **kw):
            raise ValueError("no score for you")
        """,
    )
    start = time.perf_counter()
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:score"))
    check(code, text, 1, "'score' raised ValueError: no score for you", "my_rewards.py line 2")
    assert "before training" in text
    assert not out.exists() and time.perf_counter() - start < 30


def test_reward_returning_the_wrong_count(capsys, tmp_path, out):
    path = rewards_file(tmp_path, "def short(prompts, completions, **kw):\n    return [1.0]\n")
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:short"))
    check(code, text, 1, "'short' returned 1 values for 2 completions")


def test_reward_returning_nan(capsys, tmp_path, out):
    path = rewards_file(
        tmp_path,
        "def wild(prompts, completions, **kw):\n    return [float('nan')] * len(prompts)\n",
    )
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:wild"))
    check(code, text, 1, "'wild' returned nan", "must be finite")


def test_reward_returning_strings(capsys, tmp_path, out):
    path = rewards_file(
        tmp_path, "def text(prompts, completions, **kw):\n    return ['1.0'] * len(prompts)\n"
    )
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:text"))
    check(code, text, 1, "'text' returned '1.0' (a str)")


def test_reward_past_its_timeout(capsys, tmp_path, out):
    path = rewards_file(
        tmp_path,
        """\
        import time
        def slow(prompts, completions, **kw):
            time.sleep(30)
            return [0.0] * len(prompts)
        """,
    )
    start = time.perf_counter()
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:slow", ", timeout_s: 0.5"))
    check(code, text, 1, "'slow' did not return within timeout_s=0.5 s", "timeout_s")
    assert time.perf_counter() - start < 20


@pytest.mark.slow
def test_reward_that_raises_during_training(capsys, tmp_path, out):
    """Past the empty-completion probe: it raises on the first completion with an answer."""
    path = rewards_file(
        tmp_path,
        """\
        def picky(prompts, completions, **kw):
            for c in completions:
                if "<answer>" in c or "<think>" in c:
                    raise KeyError("answer")
            return [0.0] * len(completions)
        """,
    )
    code, text = train(capsys, out, *ARITH, reward_cfg(f"{path}:picky"))
    check(code, text, 1, "'picky' raised KeyError: 'answer'", "my_rewards.py line 4")
    assert "dataset row" in text and "on_error: skip" in text
    assert len(text.strip().splitlines()) <= 8  # the run's own lines, then three


# ---- models ----------------------------------------------------------------------------------


def test_missing_model_directory(capsys, tmp_path, out):
    code, text = train(capsys, out, *ARITH, f"model.name_or_path={tmp_path / 'my-model'}")
    check(code, text, 2, "model.name_or_path", "my-model", "does not exist")
    assert "Repo id" not in text


def test_hub_id_offline_fails_at_once(capsys, tmp_path, out, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code, text = train(capsys, out, *ARITH, "model.name_or_path=SomeOrg/some-model")
    check(code, text, 2, "model.name_or_path", "'SomeOrg/some-model'", "HF_HUB_OFFLINE")
    assert time.perf_counter() - start < 10


# ---- run directories -----------------------------------------------------------------------


def test_output_dir_under_a_file(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, text = run(capsys, "train", *SMALL, *ARITH, f"train.output_dir={tmp_path}/notes.txt/run")
    check(code, text, 2, "train.output_dir", "notes.txt, which is a file")


def test_output_dir_that_cannot_be_written(capsys):
    # /proc refuses new files even to root, where a chmod would not stop anything
    code, text = run(capsys, "train", *SMALL, *ARITH, "train.output_dir=/proc/grpo-run")
    check(code, text, 2, "train.output_dir", "cannot write in /proc")


def test_output_dir_that_already_holds_a_run(capsys, out):
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5}) + "\n")
    code, text = run(capsys, "train", *SMALL, *ARITH, f"train.output_dir={out}")
    check(code, text, 2, "train.output_dir", "already holds a run", "train.resume=auto")


def test_a_second_run_into_a_directory_in_use(capsys, out):
    """The run lock (<run_dir>/.lock) of a live process refuses a second run there."""
    import socket

    from grpo.train.run_dir import LOCK, _process_start

    live = subprocess.Popen(["sleep", "60"])
    try:
        out.mkdir()
        owner = {"pid": live.pid, "host": socket.gethostname(), "start": _process_start(live.pid),
                 "since": "2026-12-04 01:00:00"}  # fmt: skip
        (out / LOCK).write_text(json.dumps(owner))
        code, text = run(capsys, "train", *SMALL, *ARITH, f"train.output_dir={out}")
    finally:
        live.kill()
        live.wait()
    check(code, text, 2, "train.output_dir", f"{out} is in use by a live run", f"pid {live.pid}")
    assert (out / LOCK).is_file()  # the live run's lock is left alone


# ---- config files and keys -----------------------------------------------------------------


def test_missing_config_file(capsys, tmp_path):
    code, text = run(capsys, "train", "--config", str(tmp_path / "absent.yaml"))
    check(code, text, 2, "absent.yaml", "does not exist")


def test_malformed_config_names_line_and_column(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 3\n  batch_size: [8\n")
    code, text = run(capsys, "train", "--config", str(path))
    check(code, text, 2, "bad.yaml line 4, column 1", "not valid YAML")


def test_config_that_is_not_a_mapping(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train.steps=3\n")
    code, text = run(capsys, "train", "--config", str(path))
    check(code, text, 2, "list.yaml", "must be a mapping", "got a list")


def test_a_key_of_another_mode_is_an_error_not_ignored(capsys, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", GOOD_ROWS)
    code, text = run(capsys, "train", f"data.train_path={path}")
    check(code, text, 2, "data.train_path", "data.task is 'arithmetic'", "data.task=file")


def test_mistyped_key(capsys):
    code, text = run(capsys, "train", "algorithm.grop_size=4")
    check(code, text, 2, "algorithm.grop_size")


# ---- grpo eval -------------------------------------------------------------------------------


def test_eval_of_a_missing_model(capsys, tmp_path):
    code, text = run(capsys, "eval", str(tmp_path / "nothing"))
    check(code, text, 2, "nothing", "does not exist")


def test_eval_of_a_run_directory_without_a_model(capsys, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    code, text = run(capsys, "eval", str(tmp_path))
    check(code, text, 2, str(tmp_path), "run directory without a saved model")


def test_eval_of_a_missing_data_file(capsys, tmp_path):
    code, text = run(capsys, "eval", "builtin:tiny-arith", "--data", str(tmp_path / "x.jsonl"))
    check(code, text, 2, "x.jsonl", "file not found")


def test_eval_resolves_a_run_directory_to_its_final_model(capsys, tmp_path):
    import shutil

    from grpo.train.models import resolve_model_path

    run_dir = tmp_path / "20260101-000000"
    shutil.copytree(resolve_model_path("builtin:tiny-arith"), run_dir / "final")
    (run_dir / "metrics.jsonl").write_text("")
    code, text = run(capsys, "eval", str(run_dir), "--num-prompts", "4", "--max-new-tokens", "4")
    assert code == 0, text
    assert json.loads(text[text.index("{") :])["prompts"] == 4


# ---- the real process: exit codes, stderr, Ctrl-C -------------------------------------------


def _grpo(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("GRPO_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "grpo.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        **kw,
    )


def test_process_exit_codes_and_stderr(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "x"\n')
    proc = _grpo("train", *file_task(path), f"train.output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "data.jsonl line 1" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) <= 3
    proc = _grpo("trian")
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


def test_debug_shows_the_traceback_above_the_error(capsys, tmp_path, out, monkeypatch):
    monkeypatch.setenv("GRPO_DEBUG", "0")  # recorded, so the "1" that --debug sets is undone
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "x"\n')
    code, text = run(capsys, "--debug", "train", *file_task(path), f"train.output_dir={out}")
    assert code == 2 and "Traceback" in text and "DatasetError" in text
    assert text.strip().splitlines()[-1].startswith("error: ")


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """A real SIGINT that reaches the command line (here: while a reward function runs, in the
    check before training, so that no model needs loading)."""
    path = rewards_file(
        tmp_path,
        """\
        import os, signal, time
        def interrupt(prompts, completions, **kw):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            return [0.0] * len(completions)
        """,
    )
    start = time.perf_counter()
    proc = _grpo(
        "train", *SMALL, *ARITH, reward_cfg(f"{path}:interrupt"), f"train.output_dir={tmp_path}/r"
    )
    assert time.perf_counter() - start < 120
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)"
    assert len((proc.stdout + proc.stderr).strip().splitlines()) <= 6
