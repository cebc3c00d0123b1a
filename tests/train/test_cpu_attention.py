"""The CPU training attention (train/cpu_attention.py) against a float64 reference written out
from the formula, and inside a real model against transformers' own SDPA path."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.train.batch import build_batch
from grpo.train.cpu_attention import NAME, matmul_attention, use_cpu_training_attention
from grpo.train.logprob_pass import completion_logprobs
from grpo.train.models import load_policy


class _Module(torch.nn.Module):
    is_causal = True


def _reference(q, k, v, allowed):
    """softmax(q k^T / sqrt(d) masked) v, element by element in float64."""
    B, H, Q, D = q.shape
    out = torch.zeros(B, H, Q, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // (H // k.shape[1])
            for i in range(Q):
                logits = [
                    float(q[b, h, i].double() @ k[b, kv, j].double()) / math.sqrt(D)
                    if allowed[b, i, j]
                    else -math.inf
                    for j in range(k.shape[2])
                ]
                top = max(logits)
                w = [math.exp(x - top) for x in logits]
                s = sum(w)
                for j, wj in enumerate(w):
                    out[b, h, i] += wj / s * v[b, kv, j].double()
    return out.transpose(1, 2)


def test_matmul_attention_matches_float64_reference_with_padding_and_gqa():
    g = torch.Generator().manual_seed(0)
    B, H, KV, L, D = 2, 4, 2, 5, 8
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, KV, L, D, generator=g)
    v = torch.randn(B, KV, L, D, generator=g)
    causal = torch.ones(L, L).tril().bool()
    allowed = causal.expand(B, L, L).clone()
    allowed[1, :, :2] = False  # row 1 is left-padded by two tokens
    allowed[1, :2, :2] = causal[:2, :2]  # its padding rows attend to themselves (no NaN)
    want = _reference(q, k, v, allowed)
    got_bool, _ = matmul_attention(_Module(), q, k, v, allowed[:, None])
    torch.testing.assert_close(got_bool.double(), want, rtol=1e-5, atol=1e-6)
    additive = torch.zeros(B, 1, L, L).masked_fill(~allowed[:, None], torch.finfo().min)
    got_add, _ = matmul_attention(_Module(), q, k, v, additive)
    torch.testing.assert_close(got_add.double(), want, rtol=1e-5, atol=1e-6)
    got_causal, _ = matmul_attention(_Module(), q, k, v, None)
    torch.testing.assert_close(
        got_causal[0].double(), _reference(q, k, v, causal.expand(B, L, L))[0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_with_cpu_attention_matches_sdpa_values_and_gradients(tiny_model_dir, checkpointing):
    """Same log-probs and gradients as transformers' SDPA on a left- and right-padded batch."""
    batch = build_batch(
        [[5, 17, 40, 9], [60, 8]],
        [[12, 13, 2], [90, 91, 92, 93, 94]],
        torch.tensor([1.0, -0.5]),
        pad_id=0,
    )
    results = []
    for impl in ("sdpa", "auto"):
        model = load_policy(str(tiny_model_dir), torch.device("cpu"), attn_implementation=impl)
        assert (model.config._attn_implementation == NAME) == (impl == "auto")
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        logp, _ = completion_logprobs(model, batch, autocast_dtype=None)
        (logp * batch.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), grads))
    (lp_sdpa, g_sdpa), (lp_ours, g_ours) = results
    torch.testing.assert_close(lp_ours, lp_sdpa, rtol=1e-5, atol=1e-6)
    assert g_sdpa.keys() == g_ours.keys() and len(g_sdpa) > 0
    for name in g_sdpa:
        # fp32 sums in another order: elementwise differences of a few 1e-6 on entries near 0,
        # so the check is on the whole tensor (a wrong mask or scale is off by far more)
        err = (g_ours[name] - g_sdpa[name]).norm() / g_sdpa[name].norm()
        assert err < 1e-5, (name, float(err))


def test_only_cpu_sdpa_models_are_switched(tiny_model_dir):
    eager = load_policy(str(tiny_model_dir), torch.device("cpu"), attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert use_cpu_training_attention(eager) is False
