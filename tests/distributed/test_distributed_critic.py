"""PPO with a critic on 2 ranks (gloo, torchrun, FSDP2 for the policy and the critic) against
one process: the same samples give the same critic loss, values and policy loss, because the
critic is sharded like the policy and every normaliser (the value loss's token count, the
whitening of the advantages) is the whole batch's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import grpo, torchrun

pytestmark = pytest.mark.slow


def _steps(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines) if "critic/value_loss" in m}


def test_gae_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    args = [
        "train",
        f"model.name_or_path={tiny_model_dir}",
        "algorithm.advantage=gae",
        "critic.lr=3e-3",
        "rollout.engine=transformers",
        "rollout.static_decode=false",  # the eager engine: no compile time per test
        "model.dtype=float32",
        "data.num_train_prompts=16",
        "data.num_eval_prompts=4",
        "algorithm.group_size=2",
        "train.batch_size=8",
        "train.micro_batch_size=3",  # uneven: the ranks run filler passes
        "rollout.max_new_tokens=8",
        "train.steps=2",
        "train.eval_every=0",
        "train.save_every=0",
        "train.save_final=false",
        "log.progress_bar=false",
        "log.plot=false",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = grpo([*args, f"train.output_dir={one}"])
    assert p1.returncode == 0, p1.stdout[-3000:]
    p2 = torchrun(["-m", "grpo", *args, f"train.output_dir={two}"], retry_native_crash=True)
    assert p2.returncode == 0, p2.stdout[-3000:]
    m1, m2 = _steps(one), _steps(two)
    assert sorted(m1) == sorted(m2) == [1, 2]
    for step in (1, 2):
        assert m2[step]["reward/mean"] == pytest.approx(m1[step]["reward/mean"], abs=1e-6)
        for key in (
            "loss",
            "grad_norm",
            "critic/value_loss",
            "critic/values_mean",
            "critic/returns_mean",
            "critic/grad_norm",
        ):
            assert m2[step][key] == pytest.approx(m1[step][key], rel=1e-4, abs=1e-7), (step, key)
    assert m1[2]["critic/values_mean"] != 0.0  # the critic learned in step 1, on both
