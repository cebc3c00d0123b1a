"""KL estimators (Schulman 2020) against hand values."""

import math

import pytest
import torch

from grpo.core import KL_ESTIMATORS, kl_penalty, kl_reward_penalty


def test_hand_values() -> None:
    # Column 0: logp -1, ref -2 -> x = ref - logp = -1.
    #   k1 = logp - ref = 1; k2 = 0.5 * 1^2 = 0.5; k3 = e^-1 - (-1) - 1 = 0.367879.
    # Column 1: logp -2, ref -1 -> x = +1.
    #   k1 = -1; k2 = 0.5; k3 = e^1 - 1 - 1 = 0.718282.
    # Column 2: equal -> all 0.
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    expected = {
        "k1": [1.0, -1.0, 0.0],
        "k2": [0.5, 0.5, 0.0],
        "k3": [0.367879, 0.718282, 0.0],
    }
    for name, values in expected.items():
        torch.testing.assert_close(
            kl_penalty(name, logp, ref), torch.tensor([values]), atol=1e-6, rtol=0
        )
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k3_small_difference_is_accurate_and_nonnegative() -> None:
    # x = 1e-4: k3 = x^2 / 2 + x^3 / 6 + ... = 5.0002e-9; a naive exp(x) - x - 1 in float32
    # would be dominated by rounding (float32 eps ~ 1.2e-7).
    logp = torch.tensor([0.0])
    ref = torch.tensor([1e-4])
    k3 = kl_penalty("k3", logp, ref).item()
    assert k3 >= 0
    assert math.isclose(k3, 5.0002e-9, rel_tol=1e-2)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        kl_penalty("k4", torch.zeros(1), torch.zeros(1))


def test_kl_reward_penalty_hand_values() -> None:
    # Row 0: three tokens, the same columns as test_hand_values: k1 = 1, -1, 0; k3 = 0.367879,
    # 0.718282, 0. Row 1: one completion token (logp -1, ref -2), then garbage under the mask.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 50.0, math.nan]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, -0.5], [-2.0, -math.inf, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # k1, sum, beta 0.1: row 0 (1 - 1 + 0) * 0.1 = 0; row 1: 1 * 0.1 = 0.1.
    k1 = kl_reward_penalty(logp, ref, mask, 0.1, "k1")
    torch.testing.assert_close(k1, torch.tensor([0.0, 0.1]), atol=1e-7, rtol=0)
    # k3, sum: row 0 (0.367879 + 0.718282) * 0.1 = 0.1086161; row 1 0.0367879.
    k3 = kl_reward_penalty(logp, ref, mask, 0.1, "k3")
    torch.testing.assert_close(k3, torch.tensor([0.1086161, 0.0367879]), atol=1e-6, rtol=0)
    # k3, mean per token: row 0 1.086161 / 3 * 0.1 = 0.0362054; row 1 unchanged (1 token).
    mean = kl_reward_penalty(logp, ref, mask, 0.1, "k3", reduction="mean")
    torch.testing.assert_close(mean, torch.tensor([0.0362054, 0.0367879]), atol=1e-6, rtol=0)
    assert k3.dtype == torch.float32 and not k3.requires_grad  # a reward: no gradient
    # what the trainer does with it: rewards - penalty, NaN rewards stay NaN
    rewards = torch.tensor([1.0, math.nan])
    shaped = rewards - k3
    assert shaped[0].item() == pytest.approx(0.8913839, abs=1e-6) and math.isnan(shaped[1])
    assert torch.equal(kl_reward_penalty(logp, ref, mask, 0.0), torch.zeros(2))
    with pytest.raises(ValueError, match="beta must be >= 0"):
        kl_reward_penalty(logp, ref, mask, -1.0)
    with pytest.raises(ValueError, match="same"):
        kl_reward_penalty(logp, ref[:, :2], mask, 0.1)
