"""Sampling-mask replay: log-probs over the top-k / top-p kept set, as vLLM samples.

Checked three ways: values worked out by hand; a literal float64 transcription of vLLM's rule
(sort ascending, mask below the k-th value, softmax, cumulative sum, mask c <= 1 - p, keep the
largest), with autograd through it for the gradients; and, where vLLM is installed, vLLM's own
``apply_top_k_top_p_pytorch`` (the function its CPU sampler runs).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from grpo.core import logprobs_from_hidden, sampling_threshold, token_entropy, token_logprobs
from grpo.core.logprobs import _HiddenLogprobs, _LogitsStats


def _vllm_rule(z: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """vLLM 0.32's top-k-then-top-p mask, transcribed literally: z [N, V] (already divided by
    the temperature) -> z with dropped tokens at -inf."""
    v = z.shape[-1]
    srt, idx = z.sort(dim=-1, descending=False)
    if 0 < k < v:
        kth = srt.gather(1, torch.full((z.shape[0], 1), v - k))
        srt = srt.masked_fill(srt < kth, float("-inf"))
    if p < 1:
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - p
        drop[:, -1] = False
        srt = srt.masked_fill(drop, float("-inf"))
    return torch.empty_like(z).scatter_(-1, idx, srt)


def _reference(z: torch.Tensor, labels: torch.Tensor, k: int, p: float) -> torch.Tensor:
    return torch.log_softmax(_vllm_rule(z, k, p), dim=-1).gather(-1, labels[:, None])[:, 0]


# p = 0.1, 0.2, 0.3, 0.4 over four tokens
LN = torch.tensor([[math.log(1), math.log(2), math.log(3), math.log(4)]], dtype=torch.float64)


def _lp(logits: torch.Tensor, label: int, **kw) -> float:
    return token_logprobs(logits[None], torch.tensor([[label]]), **kw).item()


def test_values_by_hand() -> None:
    # top_k = 2 keeps {0.3, 0.4}: log(0.4 / 0.7) = log(4/7) = -0.559616
    assert _lp(LN, 3, top_k=2) == pytest.approx(math.log(4 / 7), abs=1e-12)
    # top_p = 0.75: ascending cum 0.1, 0.3, 0.6, 1.0; drop c <= 0.25 -> drop 0.1 only
    # -> log(0.2 / 0.9) = -1.504077
    assert _lp(LN, 1, top_p=0.75) == pytest.approx(math.log(2 / 9), abs=1e-12)
    # top_k = 3 first (renormalised 2/9, 3/9, 4/9; cum 0.222, 0.556, 1), then top_p = 0.7:
    # drop c <= 0.3 -> drop 2/9 -> {3, 4}: log(4/7). top_p = 0.7 alone would keep 2/10 too:
    # cum 0.1, 0.3, 0.6 -> only 0.1 has c <= 0.3 (0.1 + 0.2 rounds above 0.3 in float64, so
    # use 0.75 above for the top-p-alone case and this one only for the order of the filters).
    assert _lp(LN, 3, top_k=3, top_p=0.7) == pytest.approx(math.log(4 / 7), abs=1e-12)
    # no truncation: plain log-softmax, log(0.4)
    assert _lp(LN, 3) == pytest.approx(math.log(0.4), abs=1e-12)


def test_temperature_divides_before_the_filter() -> None:
    # logits 2 ln i at T = 2 give p proportional to i (0.1 .. 0.4): top_p = 0.75 keeps {2, 3, 4}
    # -> log(4/9). Filtering the T = 1 distribution (p ~ i^2 = 1, 4, 9, 16 over 30; cum 0.033,
    # 0.167, 0.467, 1) would keep {3, 4} only -> log(16/25 at T=1 ...) and a different set.
    z = 2 * LN
    assert _lp(z, 3, temperature=2.0, top_p=0.75) == pytest.approx(math.log(4 / 9), abs=1e-12)
    assert _lp(z, 3, temperature=2.0, top_p=0.75) != pytest.approx(math.log(4 / 7), abs=1e-3)


def test_ties_with_the_kth_value_are_kept() -> None:
    # top_k = 2 on [0, 1, 1, 1]: the 2nd largest is 1 and vLLM keeps every logit >= it, so
    # three tokens stay: log(e / 3e) = log(1/3).
    z = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert _lp(z, 1, top_k=2) == pytest.approx(math.log(1 / 3), abs=1e-12)
    assert [t.item() for t in sampling_threshold(z, top_k=2)] == [1.0, 1.0]


def test_a_tie_cut_by_top_p_counts_what_vllm_keeps() -> None:
    # top_k = 2 then top_p = 0.5 on [0, 1, 1, 1]: the three tied tokens have 1/3 each, ascending
    # cum 1/3, 2/3, 1; vLLM drops c <= 0.5, i.e. one of them (whichever sorts first), and keeps
    # two: the sampled one's log-prob is log(e / 2e) = log(1/2) whichever it is. Each tied token
    # counts with weight 2/3.
    z = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    tau, w = sampling_threshold(z, top_k=2, top_p=0.5)
    assert tau.item() == 1.0 and w.item() == pytest.approx(2 / 3, abs=1e-15)
    for label in (1, 2, 3):
        assert _lp(z, label, top_k=2, top_p=0.5) == pytest.approx(math.log(1 / 2), abs=1e-12)
    # the same cut by top-p alone: p = 0.1, 0.3, 0.3, 0.3 (logits log 1, log 3 x3); ascending
    # cum 0.1, 0.4, 0.7, 1.0; top_p = 0.55 drops c <= 0.45: token 0 and one tied token, so
    # two of the three tied ones stay: log(0.3 / 0.6) = log(1/2).
    z = torch.tensor([[0.0, math.log(3), math.log(3), math.log(3)]], dtype=torch.float64)
    tau, w = sampling_threshold(z, top_p=0.55)
    assert tau.item() == pytest.approx(math.log(3)) and w.item() == pytest.approx(2 / 3)
    assert _lp(z, 2, top_p=0.55) == pytest.approx(math.log(1 / 2), abs=1e-12)
    # and when the tie lies wholly inside the kept set, weight 1: top_p = 0.95 drops c <= 0.05
    assert sampling_threshold(z, top_p=0.95)[1].item() == 1.0


def test_a_label_outside_the_kept_set_is_added_to_it() -> None:
    # top_k = 1 on [0, 1, 2] keeps token 2 only; the sampled label 0 (rounding put it outside)
    # is added: log(e^0 / (e^0 + e^2)) = -log(1 + e^2) = -2.126928
    z = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    assert _lp(z, 0, top_k=1) == pytest.approx(-math.log(1 + math.e**2), abs=1e-12)


@pytest.mark.parametrize("k,p", [(5, 1.0), (0, 0.9), (5, 0.8), (0, 0.3), (20, 0.95), (60, 0.5)])
def test_matches_the_literal_rule_values_and_gradients(k: int, p: float) -> None:
    g = torch.Generator().manual_seed(k * 100 + int(100 * p))
    n, v, h = 13, 50, 6
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    temperature = 0.8
    z = (hidden @ weight.T).detach() / temperature
    # labels drawn from the truncated distribution, as an engine would
    labels = torch.multinomial(torch.softmax(_vllm_rule(z, k, p), -1), 1, generator=g)[:, 0]
    upstream = torch.randn(n, generator=g, dtype=torch.float64)

    ours, _ = logprobs_from_hidden(
        hidden, weight, labels, chunk_size=4, temperature=temperature, top_k=k, top_p=p
    )
    ref = _reference(hidden @ weight.T / temperature, labels, k, p)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    grads = torch.autograd.grad((ours * upstream).sum(), (hidden, weight))
    grads_ref = torch.autograd.grad((ref * upstream).sum(), (hidden, weight))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

    # the generic logits path agrees, and truncation really changed the numbers
    logits = (hidden @ weight.T).detach().requires_grad_()
    generic = token_logprobs(
        logits, labels, chunk_size=3, temperature=temperature, top_k=k, top_p=p
    )
    torch.testing.assert_close(generic, ref.detach(), atol=1e-12, rtol=0)
    full = torch.log_softmax(z, -1).gather(-1, labels[:, None])[:, 0]
    gap = ref.detach() - full  # -log(kept mass): > 0 on every row, and not small on average
    assert gap.min() > 0 and gap.mean() > 0.05


def test_entropy_over_the_kept_set_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 30, generator=g, dtype=torch.float64, requires_grad=True)
    k, p, t = 8, 0.85, 1.3
    ent = token_entropy(logits, chunk_size=4, temperature=t, top_k=k, top_p=p)
    lq = torch.log_softmax(_vllm_rule(logits / t, k, p), -1)
    ent_ref = -(lq.exp() * lq.nan_to_num(neginf=0.0)).sum(-1)
    torch.testing.assert_close(ent, ent_ref, atol=1e-12, rtol=0)
    w = torch.randn(9, generator=g, dtype=torch.float64)
    (a,) = torch.autograd.grad((ent * w).sum(), logits)
    (b,) = torch.autograd.grad((ent_ref * w).sum(), logits)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_gradcheck_with_truncation() -> None:
    # Hand-written backward passes against finite differences (float64), logp and entropy.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 12, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 1, 2, 11])
    for trunc in [(4, 1.0), (0, 0.7), (5, 0.9)]:
        assert torch.autograd.gradcheck(
            lambda x, tr=trunc: _LogitsStats.apply(x, labels, 4, 0.7, True, tr), (logits,)
        )
    hidden = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: _HiddenLogprobs.apply(h, w, b, labels, 4, 0.7, True, (5, 0.9)),
        (hidden, weight, bias),
    )


def test_bf16_and_chunking_do_not_change_the_kept_set() -> None:
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(40, 16, generator=g).to(torch.bfloat16)
    weight = (torch.randn(64, 16, generator=g) / 4).to(torch.bfloat16)
    z = (hidden @ weight.T).float()
    labels = torch.multinomial(torch.softmax(_vllm_rule(z, 10, 0.9), -1), 1, generator=g)[:, 0]
    a, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=7, top_k=10, top_p=0.9)
    b, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=40, top_k=10, top_p=0.9)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, _reference(z, labels, 10, 0.9).float(), atol=1e-5, rtol=0)


def test_bad_truncation_arguments() -> None:
    z, y = torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="top_k"):
        token_logprobs(z, y, top_k=-1)
    with pytest.raises(ValueError, match="top_p"):
        token_logprobs(z, y, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        logprobs_from_hidden(torch.zeros(1, 2), torch.zeros(4, 2), y[0, :1], top_p=1.5)


def _vllm_sampler_mask():
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if os.environ.get("GRPO_REQUIRE_VLLM") == "1":
        from vllm.v1.sample.ops import topk_topp_sampler
    else:
        topk_topp_sampler = pytest.importorskip(
            "vllm.v1.sample.ops.topk_topp_sampler", reason="vllm is not installed"
        )
    return topk_topp_sampler.apply_top_k_top_p_pytorch


@pytest.mark.parametrize("k,p", [(20, 0.9), (0, 0.9), (7, 1.0), (40, 0.6)])
def test_matches_vllms_own_filter(k: int, p: float) -> None:
    """The kept set equals the one vLLM's sampler function computes on the same float32 logits
    (vocab 1000, a peaked and a flat batch)."""
    apply = _vllm_sampler_mask()
    g = torch.Generator().manual_seed(5)
    z = torch.cat(
        [3 * torch.randn(16, 1000, generator=g), 0.3 * torch.randn(16, 1000, generator=g)]
    )
    masked = apply(
        z.clone(),
        torch.full((32,), k if k else 1000, dtype=torch.long) if k else None,
        torch.full((32,), p) if p < 1 else None,
        allow_cpu_sync=True,
    )
    vllm_kept = masked > float("-inf")
    tau, w = sampling_threshold(z, k, p)
    assert torch.equal(z >= tau[:, None], vllm_kept)
    assert (w == 1).all()  # float32 logits from randn: no ties at the cut
    assert (vllm_kept.sum(-1) < 1000).all()  # the filter dropped tokens on every row
    labels = torch.multinomial(torch.softmax(masked, -1), 1, generator=g)[:, 0]
    want = torch.log_softmax(masked, -1).gather(-1, labels[:, None])[:, 0]
    got = token_logprobs(z, labels, top_k=k, top_p=p)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("k,p", [(20, 0.9), (0, 0.9), (0, 0.5)])
def test_matches_vllm_on_bf16_logits_with_ties(k: int, p: float) -> None:
    """bf16 logits (what a bf16 lm-head gives both sides) tie often; vLLM then keeps some of the
    tied tokens by sort position. The log-prob of every token vLLM can sample still agrees."""
    apply = _vllm_sampler_mask()
    g = torch.Generator().manual_seed(6)
    z = (4 * torch.randn(64, 1000, generator=g)).to(torch.bfloat16).float()
    masked = apply(
        z.clone(),
        torch.full((64,), k, dtype=torch.long) if k else None,
        torch.full((64,), p),
        allow_cpu_sync=True,
    )
    tau, w = sampling_threshold(z, k, p)
    assert (w < 1).sum() >= 3  # the cut falls inside a tie on several rows
    kept = masked > float("-inf")
    want = torch.log_softmax(masked, -1)
    rows = torch.arange(64)[:, None].expand(-1, 1000)[kept]
    labels = torch.arange(1000)[None].expand(64, -1)[kept]  # every token vLLM kept
    got = token_logprobs(z[rows], labels, top_k=k, top_p=p)
    torch.testing.assert_close(got, want[kept], atol=2e-6, rtol=0)
