"""Chunked log-probs and entropies: hand values, log_softmax reference, gradients, bf16."""

import math

import pytest
import torch

from grpo.core import logprobs_from_hidden, token_entropy, token_logprobs
from grpo.core.logprobs import _HiddenLogprobs, _LogitsStats


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    return logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _reference_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    return -(logp_all.exp() * logp_all).sum(-1)


def test_three_vocab_by_hand() -> None:
    # logits [0, ln2, ln3]: exp -> 1, 2, 3, sum 6, so p = 1/6, 1/3, 1/2.
    # logp = ln(1/6) = -1.791759, ln(1/3) = -1.098612, ln(1/2) = -0.693147.
    # entropy = (1/6)(1.791759) + (1/3)(1.098612) + (1/2)(0.693147)
    #         = 0.298627 + 0.366204 + 0.346574 = 1.011404.
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]]).expand(3, 3)[None]  # [1, 3, 3]
    labels = torch.tensor([[0, 1, 2]])
    logp = token_logprobs(logits, labels)
    torch.testing.assert_close(
        logp, torch.tensor([[-1.791759, -1.098612, -0.693147]]), atol=1e-6, rtol=0
    )
    assert logp.dtype == torch.float32
    ent = token_entropy(logits)
    torch.testing.assert_close(ent, torch.full((1, 3), 1.011404), atol=1e-6, rtol=0)


def test_temperature_by_hand() -> None:
    # logits [0, 2 ln2] / T=2 -> [0, ln2]: p = 1/3, 2/3; logp(label 1) = ln(2/3) = -0.405465.
    logits = torch.tensor([[[0.0, 2 * math.log(2)]]])
    logp = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    assert logp.item() == pytest.approx(-0.405465, abs=1e-6)
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [2 * math.log(2)]])
    logp_h, _ = logprobs_from_hidden(hidden, weight, torch.tensor([1]), temperature=2.0)
    assert logp_h.item() == pytest.approx(-0.405465, abs=1e-6)


def test_token_logprobs_matches_log_softmax_value_and_grad() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    upstream = torch.randn(2, 5, generator=g)
    ours = token_logprobs(logits, labels, chunk_size=3)  # 3 does not divide 10 positions
    ref = _reference(logits, labels)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=0)

    ent = token_entropy(logits, chunk_size=4)
    ent_ref = _reference_entropy(logits)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    (g_ent,) = torch.autograd.grad((ent * upstream).sum(), logits)
    (g_ent_ref,) = torch.autograd.grad((ent_ref * upstream).sum(), logits)
    torch.testing.assert_close(g_ent, g_ent_ref, atol=1e-5, rtol=0)


def test_negative_labels_give_zero_and_no_grad() -> None:
    logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[2, -100, 5, -100]])
    logp = token_logprobs(logits, labels, chunk_size=2)
    assert logp[0, 1].item() == 0.0 and logp[0, 3].item() == 0.0
    logp.sum().backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad[0, 1], torch.zeros(6))
    assert logits.grad[0, 0].abs().sum() > 0


def test_bf16_logits_upcast_per_chunk() -> None:
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(3, 4, 50, generator=g)).to(torch.bfloat16)
    labels = torch.randint(0, 50, (3, 4), generator=g)
    ours = token_logprobs(logits, labels, chunk_size=5)
    assert ours.dtype == torch.float32
    # Same bf16 values, fp32 math: the only difference is summation order.
    torch.testing.assert_close(ours, _reference(logits, labels), atol=1e-5, rtol=0)


def test_gradcheck_autograd_functions() -> None:
    # Hand-written backward passes against finite differences (float64).
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 1, 2])
    assert torch.autograd.gradcheck(
        lambda x: _LogitsStats.apply(x, labels, 2, 0.7, True), (logits,)
    )
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: _HiddenLogprobs.apply(h, w, b, labels, 2, 0.7, True),
        (hidden, weight, bias),
    )


def test_logprobs_from_hidden_matches_full_logits_value_and_grad() -> None:
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 7, 8, generator=g, requires_grad=True)  # [B, T, H] works too
    weight = torch.randn(13, 8, generator=g, requires_grad=True)
    bias = torch.randn(13, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (2, 7), generator=g)
    a, b = torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g)

    logp, ent = logprobs_from_hidden(
        hidden, weight, labels, chunk_size=4, bias=bias, with_entropy=True
    )
    assert ent is not None
    grads = torch.autograd.grad((a * logp + b * ent).sum(), (hidden, weight, bias))

    full = hidden @ weight.T + bias
    logp_ref, ent_ref = _reference(full, labels), _reference_entropy(full)
    grads_ref = torch.autograd.grad((a * logp_ref + b * ent_ref).sum(), (hidden, weight, bias))

    torch.testing.assert_close(logp, logp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    for ours, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    logp_only, none = logprobs_from_hidden(hidden, weight, labels, chunk_size=4, bias=bias)
    assert none is None
    torch.testing.assert_close(logp_only, logp_ref, atol=1e-5, rtol=0)


def test_logprobs_from_hidden_bf16_close_to_fp32() -> None:
    g = torch.Generator().manual_seed(4)
    hidden32 = torch.randn(16, 32, generator=g)
    weight32 = torch.randn(64, 32, generator=g) / math.sqrt(32)
    labels = torch.randint(0, 64, (16,), generator=g)
    hidden = hidden32.to(torch.bfloat16).requires_grad_()
    weight = weight32.to(torch.bfloat16).requires_grad_()

    logp, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=5)
    assert logp.dtype == torch.float32
    logp.sum().backward()
    assert hidden.grad is not None and weight.grad is not None
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16

    h_ref = hidden32.clone().requires_grad_()
    w_ref = weight32.clone().requires_grad_()
    ref = _reference(h_ref @ w_ref.T, labels)
    ref.sum().backward()
    # bf16 keeps 8 bits of mantissa: logits of size ~1-3 are off by ~1e-2 at most.
    assert (logp - ref).abs().max().item() < 5e-2
    for ours, want in ((hidden.grad, h_ref.grad), (weight.grad, w_ref.grad)):
        assert want is not None
        rel = (ours.float() - want).norm() / want.norm()
        assert rel.item() < 2e-2


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[V, H\]"):
        logprobs_from_hidden(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), chunk_size=0)


def test_logprobs_from_hidden_backward_keeps_the_forward_autocast_dtype() -> None:
    """Under bf16 autocast, the lm-head matmuls of backward run in bf16 like the forward's.

    The trainer calls backward outside its autocast block; without restoring the state the
    backward chunks would silently run in fp32 (8x slower on AMX CPUs and GPUs).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: list[torch.dtype] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                self.dtypes.append(args[-1].dtype)
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(12, 16, generator=g, requires_grad=True)
    weight = torch.randn(32, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 32, (12,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=5)
    recorder = MatmulDtypes()
    with recorder:
        logp.sum().backward()
    # 3 chunks x (recomputed logits, grad_h, grad_w)
    assert len(recorder.dtypes) == 9
    assert set(recorder.dtypes) == {torch.bfloat16}
    assert hidden.grad is not None and hidden.grad.dtype == torch.float32
    assert weight.grad is not None and weight.grad.dtype == torch.float32
