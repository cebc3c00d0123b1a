"""Checkpoints and exact resume, through the real command line in subprocesses.

Each case is one of the resume bugs the peers' trackers are full of, checked against an
uninterrupted run with the same seed: the final weights must be torch.equal and metrics.jsonl
must hold every step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def tiny_args(model_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}",
        "rollout.engine=transformers",
        "rollout.static_decode=false",  # the eager engine: no compile time per test
        "model.dtype=float32",
        "data.num_train_prompts=12",  # 6 steps of 2 prompts = one pass
        "data.num_eval_prompts=4",
        "algorithm.group_size=2",
        "train.batch_size=4",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=6",
        "train.eval_every=0",
        "train.steps=8",
        "train.save_every=2",
        "train.seed=3",
        "train.deterministic=true",
        "log.progress_bar=false",
        "log.plot=false",
        "optim.lr=3e-3",
        *extra,
    ]


def grpo(args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "grpo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(args: list[str], script: list[str] | None = None, env: dict | None = None):
    cmd = [sys.executable, *(script or ["-m", "grpo", "train"]), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and f'"step": {step},' in metrics.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never came")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different


def logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = grpo(["train", *tiny_args(tiny_model_dir), f"train.output_dir={out}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_two_uninterrupted_runs_end_bit_identical(tiny_model_dir, uninterrupted, tmp_path):
    again = tmp_path / "again"
    proc = grpo(["train", *tiny_args(tiny_model_dir), f"train.output_dir={again}"])
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(uninterrupted, again)
    assert logged_steps(again) == list(range(1, 9))
    ckpts = sorted(p.name for p in (again / "checkpoints").iterdir())
    assert ckpts == ["step-00000006", "step-00000008"]  # keep_last = 2


@pytest.mark.parametrize("kill_after", [3, 6])  # mid-pass; exactly at the end of the pass
def test_kill_9_then_resume_ends_with_the_same_weights(
    tiny_model_dir, uninterrupted, tmp_path, kill_after
):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir), f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_weights(uninterrupted, run)
    assert logged_steps(run) == list(range(1, 9))
    samples = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and set(samples) == set(range(1, 9))
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["steps"] == 8
        and summary["completion_tokens"]
        == json.loads((uninterrupted / "summary.json").read_text())["completion_tokens"]
    )


def test_kill_9_while_writing_checkpoints_twice(tiny_model_dir, uninterrupted, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir), f"train.output_dir={run}"]
    env = {"KILL_IN_SAVE_SEEN": str(tmp_path / "seen")}
    for _ in range(2):  # dies inside the save of step 4, then inside the save of step 6
        proc = start(args + ["train.resume=auto"], ["tests/train/_kill_in_save.py", "4,6"], env)
        assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stdout.read()
        assert list((run / "checkpoints").glob(".tmp-*"))  # the torn save is left behind
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(uninterrupted, run)
    assert logged_steps(run) == list(range(1, 9))
    assert not list((run / "checkpoints").glob(".tmp-*"))  # cleaned by the next save


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(
    tiny_model_dir, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir), "train.save_every=0", f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 3, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 60
    assert proc.returncode == 128 + signal.SIGTERM, out
    line = next(x for x in out.splitlines() if x.startswith("stopped by SIGTERM"))
    assert "checkpoints/step-0000000" in line and "train.resume=auto" in line
    assert "Traceback" not in out
    # save_every = 0 writes no periodic checkpoint, but a stop still gets one
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(uninterrupted, run)
    assert logged_steps(run) == list(range(1, 9))


def test_resume_at_the_last_step_finishes_without_training(tiny_model_dir, uninterrupted, tmp_path):
    """verl exited with 0 steps and no final model; here the run completes."""
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir), f"train.output_dir={run}"]
    assert grpo(["train", *args]).returncode == 0
    for name in ("final", "summary.json"):  # as if killed right after the last checkpoint
        path = run / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(uninterrupted, run)
    assert logged_steps(run) == list(range(1, 9))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 8]  # no duplicate


def test_resume_with_dynamic_sampling(tiny_model_dir, tmp_path):
    extra = ["algorithm.dynamic_sampling_rounds=2", "train.steps=6"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    first = grpo(["train", *tiny_args(tiny_model_dir, *extra), f"train.output_dir={whole}"])
    assert first.returncode == 0, first.stderr
    args = [*tiny_args(tiny_model_dir, *extra), f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert grpo(["train", *args, "train.resume=auto"]).returncode == 0
    assert_same_weights(whole, run)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("dynamic_sampling/rounds", 0) > 1 for r in records)


def test_a_torn_checkpoint_is_skipped_for_the_previous_one(tiny_model_dir, uninterrupted, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir), "train.keep_last=3", f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = max((run / "checkpoints").glob("step-*"))
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # cut short, as a full disk would
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping the incomplete checkpoint" in resumed.stderr
    assert f"{newest.name}" in resumed.stderr
    assert_same_weights(uninterrupted, run)


def test_an_existing_run_needs_resume_or_never(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir, "train.steps=2"), f"train.output_dir={run}"]
    assert grpo(["train", *args]).returncode == 0
    again = grpo(["train", *args])
    assert again.returncode == 2
    assert "train.resume=auto" in again.stderr and "train.resume=never" in again.stderr
    assert logged_steps(run) == [1, 2]  # nothing appended or lost
    fresh = grpo(["train", *args, "train.resume=never"])
    assert fresh.returncode == 0, fresh.stderr
    (aside,) = run.glob("superseded-*")
    assert logged_steps(aside) == [1, 2] and (aside / "checkpoints").is_dir()
    assert logged_steps(run) == [1, 2]


def test_a_directory_whose_run_failed_before_its_first_step_is_reusable(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n')
    (run / "config.yaml").write_text("old: true\n")
    proc = grpo(["train", *tiny_args(tiny_model_dir, "train.steps=1"), f"train.output_dir={run}"])
    assert proc.returncode == 0, proc.stderr
    assert logged_steps(run) == [1]


def test_a_live_run_locks_its_directory_and_a_stale_lock_is_taken_over(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    args = [*tiny_args(tiny_model_dir, "train.steps=1"), f"train.output_dir={run}"]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start_field = Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        lock = {"pid": live.pid, "host": os.uname().nodename, "start": start_field}
        (run / ".lock").write_text(json.dumps({**lock, "since": "now"}))
        refused = grpo(["train", *args])
        assert refused.returncode == 2
        assert "in use by a live run" in refused.stderr and str(live.pid) in refused.stderr
        assert not (run / "metrics.jsonl").exists()
    finally:
        live.kill()
        live.wait()
    # the process is gone: its lock is stale and is taken over
    proc = grpo(["train", *args])
    assert proc.returncode == 0, proc.stderr
    assert not (run / ".lock").exists()  # released at the end


def test_epochs_set_the_number_of_steps(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    # 12 prompts, 2 per step: 1.5 passes = 9 steps (train.steps with epochs would be an error:
    # it is not read)
    base = [a for a in tiny_args(tiny_model_dir, "train.epochs=1.5") if a != "train.steps=8"]
    args = [*base, f"train.output_dir={run}"]
    assert grpo(["train", *args]).returncode == 0
    assert logged_steps(run) == list(range(1, 10))


def test_export_writes_a_model_equal_to_the_checkpoint(tiny_model_dir, uninterrupted, tmp_path):
    out = tmp_path / "exported"
    proc = grpo(["export", str(uninterrupted / "checkpoints" / "step-00000008"), str(out)])
    assert proc.returncode == 0, proc.stderr
    exported = load_file(str(out / "model.safetensors"))
    final = weights(uninterrupted)
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    # a run directory stands for its latest checkpoint
    again = tmp_path / "again"
    assert grpo(["export", str(uninterrupted), str(again)]).returncode == 0
    assert load_file(str(again / "model.safetensors")).keys() == final.keys()


def test_ctrl_c_saves_and_a_second_ctrl_c_exits_at_once(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir, "train.steps=200"), f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    stopped = [x for x in out.splitlines() if x.startswith("stopped by SIGINT")]
    assert len(stopped) == 1 and "train.resume=auto" in stopped[0]
    step = int(stopped[0].split("after step ")[1].split(":")[0])
    assert (run / "checkpoints" / f"step-{step:08d}" / "manifest.json").is_file()

    # a slow reward keeps the step busy while the second Ctrl-C comes
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\n"
        "def slow(prompts, completions, **kw):\n"
        "    time.sleep(2)\n"
        "    return [0.0] * len(completions)\n"
    )
    again = tmp_path / "again"
    extra = ["train.steps=200", f"rewards=[{{name: '{slow}:slow'}}]"]
    proc = start([*tiny_args(tiny_model_dir, *extra), f"train.output_dir={again}"])
    wait_for_step(again, 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals at once would be delivered as one
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130
    assert "exiting now" in out and "Traceback" not in out
