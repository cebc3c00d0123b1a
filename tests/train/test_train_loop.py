"""update_policy through the real tiny Llama: micro-batch invariance and the loss formulas.

``update_policy`` is called itself with an optimizer whose ``step`` records the gradients and
changes nothing, so the test sees exactly the gradient the trainer would apply.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from grpo.config import load_config
from grpo.train import loop, update
from grpo.train.batch import build_batch
from grpo.train.logprob_pass import completion_logprobs

AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
MAX_NEW = 8
# 6 rows = 2 groups of 3, with prompts and completions of different lengths
PROMPTS = [[56, 81, 98, 5], [56, 81, 98, 5], [56, 81, 98, 5], [40, 41], [40, 41], [40, 41]]
COMPLETIONS = [
    [12, 13, 14, 2],
    [20, 21],
    [30, 31, 32, 33, 34, 35, 36, 37],
    [7],
    [60, 61, 62, 63, 64],
    [70, 71, 72],
]
ADV = torch.tensor([1.0, -0.5, -0.5, 1.2, 0.3, -1.5])


class GradRecorder(torch.optim.Optimizer):
    """An optimizer whose step stores a copy of every gradient and leaves the weights alone."""

    def __init__(self, params):
        super().__init__(list(params), {"lr": 0.0})
        self.recorded: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.recorded.append(
            [p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None]
        )


def _run(model, reference, *overrides: str):
    cfg = load_config(
        None,
        [
            f"rollout.max_new_tokens={MAX_NEW}",
            "rollout.temperature=0.9",
            "optim.max_grad_norm=0",  # no clipping: the raw gradient is compared
            "model.dtype=float32",
            "train.micro_batch_tokens=0",  # the tests plan their micro-batches themselves
            *overrides,
        ],
    )
    optimizer = GradRecorder(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return SimpleNamespace(
        cfg=cfg,
        model=model,
        reference=reference,
        compute_dtype=None,
        optimizer=optimizer,
        scheduler=scheduler,
    )


def _update(run, micro_size: int, beta: float, micro_tokens: int = 0):
    batch = build_batch(PROMPTS, COMPLETIONS, ADV, pad_id=0)
    if run.reference is not None:
        batch.ref_logprobs = update.batch_logprobs(run, run.reference, batch)
    micro = [batch.rows(i) for i in batch.plan(max_rows=micro_size, max_tokens=micro_tokens)]
    metrics = update.update_policy(run, micro, batch, beta)
    return metrics, run.optimizer.recorded


@pytest.fixture
def reference(tiny_model):
    """A frozen reference a little away from the policy, so the KL term has a gradient."""
    ref = copy.deepcopy(tiny_model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ref.requires_grad_(False)
    return ref


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batch_size_does_not_change_gradient(tiny_model, reference, aggregation):
    overrides = (f"algorithm.loss_aggregation={aggregation}", "algorithm.beta=0.1")
    whole_m, whole_g = _update(_run(tiny_model, reference, *overrides), 6, beta=0.1)
    assert len(whole_g) == 1
    assert all(p.grad is None for p in tiny_model.parameters())  # zeroed after the step
    # 3 + 3 rows, 4 + 2 rows, and rows packed by length under a 24-token budget
    for size, tokens in ((3, 0), (4, 0), (6, 24)):
        m, g = _update(_run(tiny_model, reference, *overrides), size, beta=0.1, micro_tokens=tokens)
        for a, b in zip(whole_g[0], g[0], strict=True):
            scale = max(float(a.abs().max()), 1e-3)
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)
        for key in ("loss", "kl", "entropy", "grad_norm", "num_tokens", "ratio_mean"):
            assert m[key] == pytest.approx(whole_m[key], rel=1e-5, abs=1e-6), key
    assert whole_m["kl"] > 0
    assert whole_m["num_tokens"] == sum(len(c) for c in COMPLETIONS)
    assert whole_m["ratio_mean"] == pytest.approx(1.0)
    assert whole_m["clip_frac"] == 0.0


def _hand_objective(model, aggregation: str) -> torch.Tensor:
    """-sum_i A_i * w_i * sum_t logp_it with the aggregation's weights (beta = 0, mu = 1)."""
    batch = build_batch(PROMPTS, COMPLETIONS, ADV, pad_id=0)
    logp, _ = completion_logprobs(model, batch, autocast_dtype=None, temperature=0.9)
    seq_sum = logp.sum(1)  # zeros off the mask
    lengths = torch.tensor([float(len(c)) for c in COMPLETIONS])
    B, N = len(COMPLETIONS), float(lengths.sum())  # 6 rows, 23 tokens
    if aggregation == "seq_mean_token_mean":
        w = 1.0 / (lengths * B)  # mean over each sequence's tokens, then over sequences
    elif aggregation == "token_mean":
        w = torch.full((B,), 1.0 / N)
    else:
        w = torch.full((B,), 1.0 / (B * MAX_NEW))  # Dr. GRPO: constant B * max_new_tokens
    return -(ADV * w * seq_sum).sum()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gradient_equals_hand_written_objective(tiny_model, aggregation):
    """With ratio 1 the GRPO gradient is that of -A * logp under the aggregation's weights."""
    run = _run(tiny_model, None, f"algorithm.loss_aggregation={aggregation}", "algorithm.beta=0")
    metrics, (grads,) = _update(run, 4, beta=0.0)
    _hand_objective(tiny_model, aggregation).backward()
    want = [p.grad for p in tiny_model.parameters()]
    for a, b in zip(grads, want, strict=True):
        scale = max(float(b.abs().max()), 1e-3)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    # the logged loss: per-token value -A_i (ratio 1), reduced the same way
    lengths = [len(c) for c in COMPLETIONS]
    adv = ADV.tolist()
    if aggregation == "seq_mean_token_mean":
        want_loss = -sum(adv) / 6  # each sequence's token mean is -A_i
    elif aggregation == "token_mean":
        want_loss = -sum(a * n for a, n in zip(adv, lengths, strict=True)) / 23
    else:
        want_loss = -sum(a * n for a, n in zip(adv, lengths, strict=True)) / (6 * MAX_NEW)
    assert metrics["loss"] == pytest.approx(want_loss, abs=1e-6)
    assert "kl" not in metrics


def test_several_iterations_reuse_first_pass_as_old_logprobs(tiny_model):
    """mu = 2 with unchanged weights: ratio 1 again, so both updates see the same gradient."""
    run = _run(tiny_model, None, "algorithm.beta=0", "algorithm.num_iterations=2")
    metrics, grads = _update(run, 4, beta=0.0)
    assert len(grads) == 2
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert metrics["ratio_mean"] == pytest.approx(1.0)


def test_clipping_is_applied(tiny_model):
    run = _run(tiny_model, None, "algorithm.beta=0", "optim.max_grad_norm=1e-3")
    metrics, (grads,) = _update(run, 6, beta=0.0)
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    assert metrics["grad_norm"] > 1e-3  # the norm before clipping is reported
    assert float(total) == pytest.approx(1e-3, rel=1e-3)


def test_train_two_steps_end_to_end(tiny_model_dir, tmp_path):
    """The whole trainer, 2 steps on the tiny model: files written, metrics sane."""
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            "model.dtype=float32",
            "data.num_train_prompts=8",
            "data.num_eval_prompts=4",
            "algorithm.group_size=2",
            "train.batch_size=4",
            "train.micro_batch_size=3",
            "train.steps=2",
            "train.eval_every=1",
            f"train.output_dir={tmp_path / 'run'}",
            "rollout.max_new_tokens=6",
            "rollout.stop=['</answer>']",
            # vLLM's CPU kernels have no head_dim 8 (this model's); vLLM is tested on its own
            "rollout.engine=transformers",
            "rollout.static_decode=false",  # the eager engine: no compile time per test
            "log.progress_bar=false",
            "log.plot=false",
        ],
    )
    summary = loop.train(cfg)
    run_dir = tmp_path / "run"
    assert summary["steps"] == 2
    assert summary["run_dir"] == str(run_dir)
    assert 0.0 <= summary["accuracy_before"] <= 1.0
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "final" / "config.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["tokens"] > 0 and r["kl"] is not None and r["kl"] >= 0
        assert r["completion_len/max"] <= 6
    samples = (run_dir / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 4  # samples_per_step 4, two steps


def test_beta_schedule_starts_at_beta_start_on_step_one():
    """beta_at is 0-based (steps completed); the loop's steps are 1-based."""
    from grpo.core import beta_at

    cfg = load_config(
        None,
        [
            "algorithm.beta_schedule=cosine",
            "algorithm.beta_start=0.5",
            "algorithm.beta_end=0.1",
            "train.steps=10",
        ],
    )
    assert loop.step_beta(cfg, 1, 10) == 0.5  # f = 0: held at beta_start
    assert loop.step_beta(cfg, 9, 10) == pytest.approx(0.1)  # f = 0.8: beta_end
    kw = dict(schedule="cosine", beta=0.0, beta_start=0.5, beta_end=0.1)
    assert loop.step_beta(cfg, 5, 10) == beta_at(4, 10, **kw)
