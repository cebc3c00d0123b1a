"""Truncated importance sampling (Yao et al. 2025) against hand values, and grpo_loss's
token_weights: surrogate weighted, KL not, all-ones weights a no-op."""

import math

import pytest
import torch

from grpo.core import grpo_loss, truncated_is_weights

CAP = 2.0
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
# engine_logp = old - d with d chosen per token; w = min(exp(d), 2):
#  row 0: d = 0      -> 1;  d = ln 1.5 -> 1.5;  d = ln 3   -> min(3, 2) = 2 (capped)
#  row 1: d = -ln 2  -> 0.5; d = 1000   -> 2 (no overflow to inf);  d = 0 -> 1
D = torch.tensor([[0.0, math.log(1.5), math.log(3.0)], [-math.log(2.0), 1000.0, 0.0]])
ENGINE = OLD - D
W = torch.tensor([[1.0, 1.5, 2.0], [0.5, 2.0, 1.0]])


def test_hand_values() -> None:
    w = truncated_is_weights(OLD, ENGINE, CAP)
    torch.testing.assert_close(w, W, atol=1e-6, rtol=0)
    assert torch.isfinite(w).all()


def test_mask_zeroes_and_ignores_garbage() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    engine = ENGINE.clone()
    engine[0, 2] = float("-inf")  # padding positions may hold anything
    engine[1, 1] = float("nan")
    w = truncated_is_weights(OLD, engine, CAP, mask)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.5, 0.0], [0.5, 0.0, 1.0]]))


def test_detached_and_validated() -> None:
    old = OLD.clone().requires_grad_()
    w = truncated_is_weights(old, ENGINE, CAP)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(OLD, ENGINE, 0.0)
    with pytest.raises(ValueError, match="shape"):
        truncated_is_weights(OLD, ENGINE[:, :2], CAP)


# The surrogate from tests/core/test_policy_loss.py: ratios [[1.5, 0.5, 1.1], [0.5, 1.5, 0.9]],
# A = [+1, -1], clip [0.8, 1.28] give per-token losses [[-1.28, -0.5, -1.1], [0.8, 1.5, 0.9]]
# and d(loss)/d(logp) = [[0, -0.5, -1.1], [0, 1.5, 0.9]].
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 0.9]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.ones(2, 3)
LOSS_ARGS = dict(eps_low=0.2, eps_high=0.28, aggregation="dapo", normalizer=6.0)


def _logp() -> torch.Tensor:
    return (OLD + RATIOS.log()).requires_grad_()


def test_grpo_loss_weights_surrogate_by_hand() -> None:
    logp = _logp()
    loss, _ = grpo_loss(logp, OLD, None, ADV, MASK, beta=0.0, token_weights=W, **LOSS_ARGS)
    # sum(W * per_token) / 6 = (-1.28 - 0.75 - 2.2 + 0.4 + 3.0 + 0.9) / 6 = 0.07 / 6
    torch.testing.assert_close(loss, torch.tensor(0.07 / 6), atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(loss, logp)
    # W * [[0, -0.5, -1.1], [0, 1.5, 0.9]] / 6
    expected = torch.tensor([[0.0, -0.75, -2.2], [0.0, 3.0, 0.9]]) / 6
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)


def test_grpo_loss_does_not_weight_kl() -> None:
    logp = _logp()
    ref = logp.detach() + math.log(2.0)  # x = ref - logp = ln 2: k3 = 2 - ln 2 - 1 = 1 - ln 2
    loss, stats = grpo_loss(logp, OLD, ref, ADV, MASK, beta=0.1, token_weights=W, **LOSS_ARGS)
    # weighted surrogate 0.07 / 6, plus the unweighted KL mean 0.1 * (1 - ln 2) over 6 tokens
    expected = 0.07 / 6 + 0.1 * (1 - math.log(2.0))
    torch.testing.assert_close(loss, torch.tensor(expected), atol=1e-6, rtol=0)
    assert float(stats.kl_sum) == pytest.approx(6 * (1 - math.log(2.0)), abs=1e-5)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("with_old", [True, False])
def test_all_ones_weights_equal_no_weights(aggregation: str, with_old: bool) -> None:
    torch.manual_seed(0)
    B, T = 4, 5
    logp = (-torch.rand(B, T) * 3).requires_grad_()
    old = None if not with_old else logp.detach() + 0.3 * torch.randn(B, T)
    ref = logp.detach() + 0.2 * torch.randn(B, T)
    adv = torch.randn(B)
    mask = torch.rand(B, T) > 0.3
    kw = dict(beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=aggregation, normalizer=7.0)
    a, sa = grpo_loss(logp, old, ref, adv, mask, **kw)
    b, sb = grpo_loss(logp, old, ref, adv, mask, token_weights=torch.ones(B, T), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    torch.testing.assert_close(ga, gb, atol=0, rtol=0)
    torch.testing.assert_close(sa.to_tensor(), sb.to_tensor(), atol=0, rtol=0)


def test_grpo_loss_weights_shape_checked_and_masked_garbage_safe() -> None:
    logp = _logp()
    with pytest.raises(ValueError, match="token_weights shape"):
        grpo_loss(logp, OLD, None, ADV, MASK, beta=0.0, token_weights=W[:, :2], **LOSS_ARGS)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights = W.clone()
    weights[0, 2] = float("inf")  # masked: must contribute 0, not inf/NaN, to loss and grad
    loss, _ = grpo_loss(logp, OLD, None, ADV, mask, beta=0.0, token_weights=weights, **LOSS_ARGS)
    (grad,) = torch.autograd.grad(loss, logp)
    # (-1.28 - 0.75 + 0.4 + 3.0 + 0.9) / 6 = 2.27 / 6
    torch.testing.assert_close(loss, torch.tensor(2.27 / 6), atol=1e-6, rtol=0)
    assert torch.isfinite(grad).all() and grad[0, 2] == 0
