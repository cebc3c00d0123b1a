"""PPO with a critic (algorithm.advantage=gae) through the command line: the critic's metrics,
its warm-up, and its state in checkpoints (an interrupted run resumes to the same weights)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
from test_resume import assert_same_weights, grpo, start, tiny_args, wait_for_step
from torch.distributed.checkpoint import FileSystemReader

from grpo.cli import main

pytestmark = pytest.mark.slow

CRITIC_METRICS = [
    "critic/value_loss",
    "critic/vf_clipfrac",
    "critic/value_mse",
    "critic/values_mean",
    "critic/returns_mean",
    "critic/explained_var",
    "critic/grad_norm",
    "critic/lr",
    "time/values",
    "time/critic_update",
]


def odd_length_reward(tmp_path: Path) -> str:
    """A reward the random tiny model earns (it scores 0 on the task): 1 or 2 by the parity
    of the completion's length, so the returns vary and the critic has something to learn."""
    reward = tmp_path / "odd.py"
    reward.write_text(
        "def odd_length(prompts, completions, **kw):\n"
        "    return [1.0 + len(c) % 2 for c in completions]\n"
    )
    return f"rewards=[{{name: '{reward}:odd_length'}}]"


def _steps(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "reward/mean" in r]


# a short PPO run on the built-in task: the eager engine (no compile time per test), no plots
PPO_RUN = [
    "algorithm.advantage=gae",
    "rollout.engine=transformers",
    "rollout.static_decode=false",
    "train.eval_every=0",
    "data.num_eval_prompts=8",
    "log.progress_bar=false",
    "log.plot=false",
]


def test_gae_run_writes_the_critic_metrics(tmp_path):
    out = tmp_path / "run"
    args = [
        *PPO_RUN,
        "train.steps=3",
        "train.batch_size=16",
        "train.micro_batch_size=5",  # uneven split on purpose
        f"train.output_dir={out}",
    ]
    assert main(["train", *args]) == 0
    steps = _steps(out)
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        for key in [*CRITIC_METRICS, "loss", "kl", "grad_norm"]:
            assert isinstance(r[key], int | float) and math.isfinite(r[key]), (key, r[key])
        assert 0 <= r["critic/vf_clipfrac"] <= 1
    # the head starts at 0: the first values are all 0, later ones are not
    assert steps[0]["critic/values_mean"] == 0.0
    assert steps[-1]["critic/values_mean"] != 0.0


def test_gae_trains_with_one_completion_per_prompt(tmp_path):
    """PPO's usual shape: G = 1, the critic is the only baseline (GRPO's group statistics are
    undefined there and must not be needed)."""
    out = tmp_path / "run"
    args = [
        *PPO_RUN,
        "algorithm.group_size=1",
        "train.steps=2",
        "train.batch_size=8",
        "train.micro_batch_size=8",
        f"train.output_dir={out}",
    ]
    assert main(["train", *args]) == 0
    steps = _steps(out)
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for key in [*CRITIC_METRICS, "loss", "grad_norm", "reward/mean"]:
            assert isinstance(r[key], int | float) and math.isfinite(r[key]), (key, r[key])
    assert steps[-1]["grad_norm"] > 0


def test_critic_warm_up_keeps_the_policy_still_while_the_critic_learns(tiny_model_dir, tmp_path):
    """During critic.warmup_steps only the critic is updated: the policy samples from its
    initial weights (no policy loss is logged) while the critic's error on the returns of the
    same policy falls (from E[R^2] with the zero head towards Var(R))."""
    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir,
        odd_length_reward(tmp_path),
        "algorithm.advantage=gae",
        "train.steps=7",
        "critic.warmup_steps=6",
        "critic.lr=1e-2",
        "algorithm.num_iterations=4",  # 4 critic steps per batch
        "algorithm.beta=0",
        "train.save_every=0",
        f"train.output_dir={out}",
    )
    proc = grpo(["train", *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = _steps(out)
    assert [("loss" in r) for r in steps] == [False] * 6 + [True]
    assert all("critic/value_loss" in r for r in steps)
    mse = [r["critic/value_mse"] for r in steps]
    assert sum(mse[4:6]) < 0.5 * sum(mse[0:2]), mse


def test_gae_kill_9_then_resume_ends_with_the_same_weights(tiny_model_dir, tmp_path):
    """The critic and its AdamW state are in the checkpoint: a run killed after step 5
    resumes from step 4 and ends bit-identical to the uninterrupted run (the critic's values
    feed the policy's advantages, so a critic restarted from scratch would not)."""
    extra = ["algorithm.advantage=gae", "train.steps=6", "critic.lr=3e-3"]
    extra.append(odd_length_reward(tmp_path))
    whole, run = tmp_path / "whole", tmp_path / "run"
    first = grpo(["train", *tiny_args(tiny_model_dir, *extra), f"train.output_dir={whole}"])
    assert first.returncode == 0, first.stdout + first.stderr
    args = [*tiny_args(tiny_model_dir, *extra), f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = max((run / "checkpoints").glob("step-*"))
    saved = FileSystemReader(str(newest)).read_metadata().state_dict_metadata
    assert any(k.startswith("critic.") for k in saved) and any(
        k.startswith("critic_optim.") for k in saved
    )
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_weights(whole, run)
    a, b = _steps(whole), _steps(run)
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert x["critic/value_loss"] == y["critic/value_loss"], x["step"]
    assert len({x["critic/value_loss"] for x in a}) == 6  # the critic's loss moves


def test_ppo_learns_the_builtin_task(tmp_path):
    """The shipped model on the built-in task: PPO's reward rises within 8 steps (measured:
    about 0.26 over steps 1-2 and 0.9 over steps 7-8 of the maximum 1.2)."""
    out = tmp_path / "run"
    args = [
        "algorithm.advantage=gae",
        "rollout.engine=transformers",
        "rollout.static_decode=false",  # the eager engine: no compile time per test
        "train.steps=8",
        "train.eval_every=0",
        "data.num_eval_prompts=8",
        "train.save_every=0",
        "train.save_final=false",
        "log.progress_bar=false",
        "log.plot=false",
        f"train.output_dir={out}",
    ]
    assert main(["train", *args]) == 0
    reward = [r["reward/mean"] for r in _steps(out)]
    assert sum(reward[6:8]) / 2 > sum(reward[0:2]) / 2 + 0.3, reward
