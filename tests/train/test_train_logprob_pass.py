"""completion_logprobs against a plain per-row forward pass of the real tiny Llama.

The reference runs each row on its own, prompt + completion with no padding at all, so it
checks that left padding, the attention mask and the position ids of the batched pass are right.
Each check runs on the tiny Llama and on a tiny GPT-2: RoPE only sees relative positions, so a
constant offset in the position ids of a left-padded row is invisible on Llama; GPT-2's learned
absolute positions make such a mistake visible.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import grpo.train.logprob_pass as logprob_pass
from grpo.train.batch import build_batch
from grpo.train.logprob_pass import completion_logprobs

# Token ids of the tiny model's vocabulary (0 is <pad>); lengths vary so rows need left and right
# padding of different widths.
PROMPTS = [[5, 17, 40, 9, 23], [60, 8], [1, 33, 34, 35], [70], [44, 45, 46]]
COMPLETIONS = [[12, 13, 2], [90, 91, 92, 93, 94, 95], [7], [20, 21, 22, 23], [3, 4]]


@pytest.fixture
def model(any_tiny_model):
    return any_tiny_model


@pytest.fixture
def batch():
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0])
    return build_batch(PROMPTS, COMPLETIONS, adv, pad_id=0)


def _reference(model, temperature: float = 1.0, grad: bool = False):
    """Per-row (logp [len(c)], entropy [len(c)]) from an unpadded forward pass."""
    out = []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for p, c in zip(PROMPTS, COMPLETIONS, strict=True):
            ids = torch.tensor([p + c])
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1])[None],
                use_cache=False,
            ).logits[0]
            # position len(p) - 1 + j predicts completion token j
            z = logits[len(p) - 1 : len(p) - 1 + len(c)].float() / temperature
            logsm = torch.log_softmax(z, dim=-1)
            logp = logsm.gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            entropy = -(logsm.exp() * logsm).sum(-1)
            out.append((logp, entropy))
    return out


def _as_rows(t: torch.Tensor) -> list[torch.Tensor]:
    return [t[i, : len(c)] for i, c in enumerate(COMPLETIONS)]


def test_matches_unpadded_reference(model, batch):
    logp, entropy = completion_logprobs(model, batch, autocast_dtype=None)
    assert entropy is None
    assert logp.shape == (5, 6) and logp.dtype == torch.float32
    ref = _reference(model)
    for i, (got, (want, _)) in enumerate(zip(_as_rows(logp), ref, strict=True)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"row {i}")
    # zeros outside the completion mask
    assert torch.all(logp[batch.completion_mask == 0] == 0)
    # the log-probs are real: not all equal, all negative
    assert (logp[batch.completion_mask.bool()] < 0).all()
    assert logp[batch.completion_mask.bool()].std() > 0.1


def test_reference_detects_attention_to_padding(model, batch):
    """Sanity for the comparison itself: letting the pads be attended to is caught."""
    wrong = dataclasses.replace(batch, attention_mask=torch.ones_like(batch.attention_mask))
    logp, _ = completion_logprobs(model, wrong, autocast_dtype=None)
    ref = _reference(model)
    worst = max(
        (got - want).abs().max() for got, (want, _) in zip(_as_rows(logp), ref, strict=True)
    )
    assert worst > 1e-2


def test_micro_batches_equal_whole_batch(model, batch):
    whole, _ = completion_logprobs(model, batch, autocast_dtype=None)
    for size in (1, 2, 3):
        parts = []
        for mb in batch.micro_batches(size):
            lp, _ = completion_logprobs(model, mb, autocast_dtype=None)
            parts.append(torch.nn.functional.pad(lp, (0, batch.completion_width - lp.shape[1])))
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-5)


def test_generic_path_equals_lean_path(model, batch, monkeypatch):
    assert logprob_pass._plain_linear_head(model) is not None  # both models take the lean path
    lean, lean_ent = completion_logprobs(
        model, batch, autocast_dtype=None, with_entropy=True, temperature=0.7
    )
    monkeypatch.setattr(logprob_pass, "_plain_linear_head", lambda model: None)
    generic, generic_ent = completion_logprobs(
        model, batch, autocast_dtype=None, with_entropy=True, temperature=0.7
    )
    torch.testing.assert_close(generic, lean, rtol=0, atol=1e-5)
    torch.testing.assert_close(generic_ent, lean_ent, rtol=0, atol=1e-5)
    ref = _reference(model, temperature=0.7)
    for got, (want, _) in zip(_as_rows(generic), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_softcapped_config_takes_generic_path(tiny_model):
    tiny_model.config.final_logit_softcapping = 30.0
    assert logprob_pass._plain_linear_head(tiny_model) is None


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_logits(model, batch, temperature):
    logp, _ = completion_logprobs(model, batch, autocast_dtype=None, temperature=temperature)
    plain, _ = completion_logprobs(model, batch, autocast_dtype=None)
    assert (logp - plain).abs().max() > 1e-2  # temperature does change the numbers
    # at T=0.5 a log-prob reaches -16: fp32 rounding of the log-sum-exp grows with it (1.2e-5
    # was seen), hence a relative part of 2e-6 (16 ulps) on top of the absolute 1e-5
    for got, (want, _) in zip(_as_rows(logp), _reference(model, temperature), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-5)


def test_entropy_matches_direct_computation(model, batch):
    _, entropy = completion_logprobs(
        model, batch, autocast_dtype=None, with_entropy=True, temperature=1.3
    )
    assert entropy is not None and entropy.shape == (5, 6)
    assert not entropy.requires_grad  # a metric only
    assert torch.all(entropy[batch.completion_mask == 0] == 0)
    for got, (_, want) in zip(_as_rows(entropy), _reference(model, 1.3), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # bounded by log V
    assert entropy.max() <= torch.log(torch.tensor(128.0)) + 1e-5


def test_gradients_match_reference(model, batch):
    """The hand-written backward of the lean path gives autograd's gradient of the reference."""
    weights = torch.linspace(-1.0, 1.0, 6)[None].expand(5, 6) * batch.completion_mask
    logp, _ = completion_logprobs(model, batch, autocast_dtype=None, temperature=0.9)
    assert logp.requires_grad
    (weights * logp).sum().backward()
    lean = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    ref = _reference(model, temperature=0.9, grad=True)
    total = sum(
        (weights[i, : len(c)] * lp).sum()
        for i, (c, (lp, _)) in enumerate(zip(COMPLETIONS, ref, strict=True))
    )
    total.backward()
    for name, p in model.named_parameters():
        assert lean[name] is not None, f"no gradient reached {name}"
        # fp32 summation-order noise scales with the gradient's size (up to ~13 here)
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(lean[name], p.grad, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
    # the gradient reaches every parameter, the embeddings and the first layer included
    assert all(g.abs().sum() > 0 for g in lean.values())


def test_rows_outside_loss_mask_get_zero_logprobs(tiny_model):
    """A row kept out of the loss gets zeros; the other rows are unaffected."""
    b = build_batch(PROMPTS[:2], COMPLETIONS[:2], torch.zeros(2), 0, loss_mask=[False, True])
    logp, _ = completion_logprobs(tiny_model, b, autocast_dtype=None)
    assert torch.all(logp[0] == 0)
    want = _reference(tiny_model)[1][0]
    torch.testing.assert_close(logp[1, : len(COMPLETIONS[1])], want, rtol=0, atol=1e-5)


def test_bf16_autocast_is_close_and_fp32(tiny_model, batch):
    fp32, _ = completion_logprobs(tiny_model, batch, autocast_dtype=None)
    bf16, _ = completion_logprobs(tiny_model, batch, autocast_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    m = batch.completion_mask.bool()
    # bf16 has ~3 significant digits; log-probs of a few nats agree to a few hundredths
    assert (bf16[m] - fp32[m]).abs().max() < 0.15
    assert not torch.equal(bf16, fp32)
