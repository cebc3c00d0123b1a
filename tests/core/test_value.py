"""GAE, token-level rewards, whitening and the clipped value loss (grpo.core.value)."""

from __future__ import annotations

import pytest
import torch

from grpo.core import (
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    masked_sums,
    token_level_rewards,
    whiten,
)


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # row 0: 3 tokens; row 1: 2 tokens then padding, whose reward (5) and value (7) are
    # garbage that must not leak in (V after the last token is 0, not 7)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return rewards, values, mask


def test_gae_matches_numbers_worked_out_by_hand():
    # gamma = 0.9, lambda = 0.5, gamma * lambda = 0.45.
    # row 0: delta_2 = 1 + 0.9*0 - 0.4 = 0.6          A_2 = 0.6
    #        delta_1 = 0 + 0.9*0.4 - 0.2 = 0.16       A_1 = 0.16 + 0.45*0.6 = 0.43
    #        delta_0 = 0 + 0.9*0.2 - 0.5 = -0.32      A_0 = -0.32 + 0.45*0.43 = -0.1265
    #        returns = A + V = 0.3735, 0.63, 1.0
    # row 1: delta_1 = 2 + 0.9*0 - 0.5 = 1.5          A_1 = 1.5
    #        delta_0 = 0 + 0.9*0.5 - 1.0 = -0.55      A_0 = -0.55 + 0.45*1.5 = 0.125
    #        returns = 1.125, 2.0, (padding) 0
    rewards, values, mask = _hand_batch()
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv.dtype == ret.dtype == torch.float32
    torch.testing.assert_close(
        adv, torch.tensor([[-0.1265, 0.43, 0.6], [0.125, 1.5, 0.0]]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        ret, torch.tensor([[0.3735, 0.63, 1.0], [1.125, 2.0, 0.0]]), atol=1e-6, rtol=0
    )


def test_gae_tells_gamma_from_lambda():
    rewards, values, mask = _hand_batch()
    a, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    swapped, _ = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.9)
    # row 0 swapped: delta_2 = 0.6, delta_1 = 0.5*0.4 - 0.2 = 0, A_1 = 0.45*0.6 = 0.27
    assert swapped[0, 1] == pytest.approx(0.27, abs=1e-6)
    assert not torch.allclose(a, swapped)


def test_gae_lambda_one_is_the_discounted_return_minus_v_and_zero_is_td():
    rewards, values, mask = _hand_batch()
    a1, r1 = gae_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    # lambda = 1: R_t = sum_l gamma^l r_{t+l}, row 0: 0.81, 0.9, 1; row 1: 1.8, 2
    torch.testing.assert_close(r1, torch.tensor([[0.81, 0.9, 1.0], [1.8, 2.0, 0.0]]))
    torch.testing.assert_close(a1, (r1 - values) * mask)
    a0, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.0)
    torch.testing.assert_close(a0, torch.tensor([[-0.32, 0.16, 0.6], [-0.55, 1.5, 0.0]]))


def _reference_gae(rewards, values, lengths, gamma, lam):
    """The explicit sum of eq. 16 (no recursion), one row and one token at a time, float64."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        n = int(lengths[i])
        r = [float(x) for x in rewards[i, :n]]
        v = [float(x) for x in values[i, :n]] + [0.0]  # V after the last token = 0
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[i, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    ret = adv.clone()
    for i in range(B):
        n = int(lengths[i])
        ret[i, :n] += values[i, :n].double()
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.7, 0.3), (1.0, 1.0)])
def test_gae_matches_an_independent_float64_reference_on_random_inputs(gamma, lam):
    g = torch.Generator().manual_seed(7)
    B, T = 9, 13
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = T, 0  # a full row and an empty one
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _reference_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv.double(), ref_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret.double(), ref_ret, atol=1e-6, rtol=0)


def test_gae_rejects_bad_arguments():
    rewards, values, mask = _hand_batch()
    with pytest.raises(ValueError, match="gamma"):
        gae_advantages(rewards, values, mask, gamma=1.5, lam=0.9)
    with pytest.raises(ValueError, match="shape"):
        gae_advantages(rewards, values[:, :2], mask, gamma=1.0, lam=0.9)


def test_token_level_rewards_put_the_reward_on_the_last_token_minus_beta_kl():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    kl = torch.tensor([[0.2, -0.4, 0.6], [1.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    out = token_level_rewards(torch.tensor([1.0, 0.5, 3.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[0, 0, 1.0], [0.5, 0, 0], [0, 0, 0]]))
    # beta = 0.5: -0.1, +0.2, 1 - 0.3; row 1: 0.5 - 0.5; the empty row gets nothing
    out = token_level_rewards(torch.tensor([1.0, 0.5, 3.0]), mask, kl, beta=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.1, 0.2, 0.7], [0.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        token_level_rewards(torch.tensor([float("nan"), 0.0, 0.0]), mask)


def test_whiten_uses_the_batch_mean_and_sample_variance_over_the_mask():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # mean 2, sample variance ((1 + 0 + 1) / 2) = 1
    torch.testing.assert_close(whiten(x, mask, eps=0.0), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    # sums of two halves (two ranks) give the whole batch's statistics
    a, b = masked_sums(x[:1], mask[:1]), masked_sums(x[1:], mask[1:])
    both = tuple(p + q for p, q in zip(a, b, strict=True))
    torch.testing.assert_close(whiten(x[1:], mask[1:], both, eps=0.0), torch.tensor([[1.0, 0.0]]))


def test_explained_variance():
    mask = torch.ones(1, 4)
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    perfect = explained_variance(masked_sums(ret - ret, mask), masked_sums(ret, mask))
    constant = explained_variance(masked_sums(ret - 2.5, mask), masked_sums(ret, mask))
    # V = R / 2: residual R / 2 has a quarter of the variance
    half = explained_variance(masked_sums(ret / 2, mask), masked_sums(ret, mask))
    assert (perfect, constant, half) == (pytest.approx(1.0), pytest.approx(0.0), 0.75)


def test_clipped_value_loss_by_hand():
    # token 0: V = 1.0, V_old = 0.5, R = 0: err 1.0; V_clip = 0.7, err_clip 0.49 -> 1.0
    # token 1: V = 0.9, V_old = 0.0, R = 1: err 0.01; V_clip = 0.2, err_clip 0.64 -> 0.64,
    #          the clip acts and the gradient is 0
    # token 2: padding (garbage)
    values = torch.tensor([[1.0, 0.9, 50.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.0, -3.0]])
    ret = torch.tensor([[0.0, 1.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = clipped_value_loss(values, old, ret, mask, clip=0.2, normalizer=2.0)
    # 0.5 * (1.0 + 0.64) / 2
    assert float(loss.detach()) == pytest.approx(0.41, abs=1e-6)
    assert stats.clipped_tokens == 1.0 and stats.num_tokens == 2.0
    assert stats.error_sum == pytest.approx(1.01, abs=1e-6)
    loss.backward()
    # d/dV_0 = 0.5 * 2 * (1.0 - 0) / 2 = 0.5
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))

    values.grad = None
    loss, stats = clipped_value_loss(values, old, ret, mask, clip=None, normalizer=2.0)
    assert float(loss.detach()) == pytest.approx(0.5 * 1.01 / 2, abs=1e-6)
    assert stats.clipped_tokens == 0
    loss.backward()
    # d/dV_1 = 0.5 * 2 * (0.9 - 1) / 2 = -0.05
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, -0.05, 0.0]]))


def test_value_loss_micro_batches_add_up_to_the_batch():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, 5, generator=g)
    old, ret = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    n = float(mask.sum())
    whole, _ = clipped_value_loss(v, old, ret, mask, clip=0.2, normalizer=n)
    parts = sum(
        clipped_value_loss(v[s], old[s], ret[s], mask[s], clip=0.2, normalizer=n)[0]
        for s in (slice(0, 2), slice(2, 6))
    )
    torch.testing.assert_close(parts, whole)
