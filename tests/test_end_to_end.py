"""A few steps of the default training on the shipped model, checked from the outside."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.cli import main
from grpo.config import load_config
from grpo.train.loop import train
from grpo.train.models import resolve_model_path

pytestmark = pytest.mark.slow

SMALL = [
    "train.steps=3",
    "train.batch_size=16",
    "train.micro_batch_size=5",  # uneven split on purpose
    "data.num_eval_prompts=16",
    "train.eval_every=2",
    "log.progress_bar=false",
    "optim.lr=1e-3",
]


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def test_default_training_runs_and_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, f"train.output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy:" in printed and str(out) in printed

    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.json", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").stat().st_size > 10_000

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # before, every 2 steps, after
    required = [
        "reward/mean",
        "reward/std",
        "rewards/accuracy/mean",
        "rewards/format/std",
        "frac_zero_std",
        "kl",
        "clip_low_frac",
        "clip_high_frac",
        "entropy",
        "completion_len/mean",
        "completion_len/max",
        "truncated_frac",
        "tokens_per_s",
        "time/generate",
        "time/score",
        "time/update",
        "loss",
        "grad_norm",
        "lr",
    ]
    for r in steps:
        for key in required:
            assert isinstance(r[key], int | float) and math.isfinite(r[key]), (key, r[key])
    # mu = 1: the ratio is exactly 1, so nothing is clipped
    assert all(r["ratio_mean"] == pytest.approx(1.0, abs=1e-6) for r in steps)
    assert all(r["clip_frac"] == 0.0 for r in steps)

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4 and all("completion" in s and "reward" in s for s in samples)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 <= summary["accuracy_after"] <= 1
    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        # the shipped 4M model on a CPU: auto decodes with the compiled static cache (faster
        # than vLLM's CPU engine there), vLLM installed or not
        assert summary["engine"] == "TransformersEngine" and summary["static_decode"] is True
    assert summary["completion_tokens"] > 0

    # the final model loads with plain transformers, and training changed its weights
    final = out / "final"
    AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    before = _weights(resolve_model_path("builtin:tiny-arith"))
    after = _weights(final)
    changed = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
    assert len(changed) >= len(before) // 2


def test_beta_zero_loads_no_reference_and_mu_two_runs(tmp_path, monkeypatch):
    def no_reference(*args, **kwargs):
        raise AssertionError("beta = 0 must not build a reference model")

    monkeypatch.setattr("grpo.train.setup.frozen_reference", no_reference)
    cfg = load_config(
        overrides=[
            *SMALL,
            "train.steps=1",
            "algorithm.beta=0",
            "algorithm.num_iterations=2",
            f"train.output_dir={tmp_path / 'run'}",
            "train.save_final=false",
            "log.plot=false",
        ]
    )
    summary = train(cfg)
    assert summary["steps"] == 1
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward/mean" in r)
    assert "kl" not in step  # no reference model, no KL
    assert not (tmp_path / "run" / "final").exists()


def test_bad_config_fails_before_loading_a_model(tmp_path, capsys):
    code = main(["train", "train.batch_size=15", f"train.output_dir={tmp_path / 'x'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err
    assert not (tmp_path / "x").exists()


def test_an_existing_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(["train", *SMALL, f"train.output_dir={out}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing appended or lost
