"""The shipped configs load, and the written-out default is the code's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_tiny_arith_yaml_is_the_embedded_default():
    # both resolved the same way (unset clip ranges take the policy loss's defaults)
    assert load_config(EXAMPLES / "tiny_arith.yaml") == load_config()


def test_gsm8k_example_loads_with_the_gsm8k_task():
    cfg = load_config(EXAMPLES / "gsm8k_qwen2.5-0.5b.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.data.task == "gsm8k"
    assert [r.name for r in cfg.rewards] == ["accuracy", "format", "reasoning_length"]
    assert cfg.train.batch_size % cfg.algorithm.group_size == 0


@pytest.mark.slow
def test_grpo_eval_reports_greedy_accuracy_and_pass_at_k(capsys):
    code = main(["eval", "builtin:tiny-arith", "--num-prompts", "16", "--k", "1", "4"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == 16 and report["samples_per_prompt"] == 4
    for key in ("greedy_accuracy", "sampled_accuracy", "pass@1", "pass@4"):
        assert 0.0 <= report[key] <= 1.0
    # pass@k is monotone in k, and pass@1 is the mean correctness of the samples
    assert report["pass@4"] >= report["pass@1"]
    assert report["pass@1"] == pytest.approx(report["sampled_accuracy"])
    # the shipped model samples worked solutions a quarter of the time; greedy rarely works
    assert report["pass@4"] > report["greedy_accuracy"]
