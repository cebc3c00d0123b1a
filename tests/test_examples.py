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


def test_multistep_example_loads_with_its_task_and_shipped_model():
    from grpo.train.models import resolve_model_path

    cfg = load_config(EXAMPLES / "multistep.yaml")
    assert cfg.model.name_or_path == "builtin:tiny-multistep"
    assert cfg.data.task == "multistep"
    assert cfg.rollout.engine == "transformers"
    assert [r.name for r in cfg.rewards] == ["accuracy", "format", "correct_steps"]
    assert cfg.train.batch_size % cfg.algorithm.group_size == 0
    # the model is shipped, with its tokenizer
    path = Path(resolve_model_path(cfg.model.name_or_path))
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.slow
def test_grpo_eval_on_the_multistep_task_scores_its_own_held_out_set(capsys):
    code = main(
        ["eval", "builtin:tiny-multistep", "--task", "multistep", "--num-prompts", "16"]
        + ["--k", "1", "4"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == 16
    assert report["pass@4"] >= report["pass@1"]
