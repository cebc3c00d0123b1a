"""The built-in task trains a few steps with every advantage estimator and loss option, no NaN."""

from __future__ import annotations

import json
import math

import pytest

from grpo.config import load_config
from grpo.train.loop import train

pytestmark = pytest.mark.slow

BASE = [
    "train.steps=2",
    "train.batch_size=16",
    "train.micro_batch_size=6",
    "data.num_eval_prompts=8",
    "train.eval_every=0",
    "log.progress_bar=false",
    "log.plot=false",
    "train.save_final=false",
    "rollout.engine=transformers",
    "rollout.static_decode=false",  # the eager engine: no compile time per test
]


def _run(tmp_path, *overrides: str) -> list[dict]:
    cfg = load_config(None, [*BASE, f"train.output_dir={tmp_path / 'run'}", *overrides])
    summary = train(cfg)
    assert summary["steps"] == 2
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        for key in ("loss", "grad_norm", "entropy", "reward/mean", "frac_zero_std"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r)
    return steps


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "batch_std", "rloo"])
def test_each_outcome_estimator_trains(tmp_path, estimator):
    steps = _run(tmp_path, f"algorithm.advantage={estimator}")
    assert all(r["grad_norm"] > 0 for r in steps)


def test_process_supervision_trains_on_step_rewards(tmp_path):
    steps = _run(
        tmp_path,
        "algorithm.advantage=process",
        "algorithm.step_reward=grpo.rewards.step_rewards:arithmetic_step_rewards",
        "algorithm.step_reward_kwargs={incorrect_reward: -1.0}",
    )
    assert all(r["grad_norm"] > 0 for r in steps)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_each_loss_aggregation_trains(tmp_path, aggregation):
    _run(tmp_path, f"algorithm.loss_aggregation={aggregation}")


def test_all_options_together(tmp_path):
    steps = _run(
        tmp_path,
        "algorithm.num_iterations=2",
        "algorithm.eps_high=0.28",
        "algorithm.dual_clip_c=3",
        "algorithm.kl_in_reward=true",
        "algorithm.kl_estimator=k1",
        "algorithm.mask_truncated=true",
        "algorithm.dynamic_sampling_rounds=2",
        "algorithm.beta_schedule=cosine",
        "train.micro_batch_tokens=200",
        "model.gradient_checkpointing=true",
        "rewards=[{name: accuracy}, {name: format, weight: 0.2}, {name: self_consistency, "
        "weight: 0.1}, {name: soft_overlong, weight: 1.0, kwargs: {max_completion_length: 64, "
        "buffer: 16}}]",
    )
    for r in steps:
        # the KL went into the reward; it is still measured against the reference and logged
        assert math.isfinite(r["kl_reward_penalty"]) and math.isfinite(r["kl"])
        assert 1 <= r["dynamic_sampling/rounds"] <= 3
        assert r["dynamic_sampling/prompts_consumed"] == 2 * r["dynamic_sampling/rounds"]
        assert "last_iteration/clip_frac" in r
        assert math.isfinite(r["rewards/self_consistency/mean"])


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_each_policy_loss_trains_off_policy_with_an_entropy_bonus(tmp_path, loss):
    # mu = 2: the second pass is off-policy, where the losses differ from ppo_clip
    steps = _run(
        tmp_path,
        f"algorithm.policy_loss={loss}",
        "algorithm.num_iterations=2",
        "algorithm.entropy_coef=0.01",
    )
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    # the loss's documented clip range and aggregation, resolved into the run's config
    if loss == "gspo":
        assert "eps_low: 0.0003" in cfg and "eps_high: 0.0004" in cfg
        assert "loss_aggregation: grpo" in cfg
    else:
        assert "eps_low: 1.0" in cfg and "eps_high: 4.0" in cfg
        assert "loss_aggregation: dapo" in cfg
    for r in steps:
        assert r["grad_norm"] > 0 and "last_iteration/ratio_mean" in r
        assert r["last_iteration/ratio_mean"] != 1.0  # the second pass was off-policy
    assert "rollout/logprob_abs_diff" not in steps[0]  # the transformers engine reports none


def test_sampling_mask_replay_with_the_transformers_engine(tmp_path):
    # top_k / top_p with the trainer's own sampler: the replayed kept set makes the first
    # pass's log-probs those of the truncated distribution (no NaN, no -inf)
    steps = _run(tmp_path, "rollout.top_k=5", "rollout.top_p=0.9", "algorithm.entropy_coef=0.01")
    assert all(r["grad_norm"] > 0 for r in steps)
