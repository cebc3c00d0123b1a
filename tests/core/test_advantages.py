"""Group advantages checked against numbers worked out by hand."""

import math

import pytest
import torch

from grpo.core import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dr_grpo_advantages,
    group_advantages,
)

NAN = float("nan")


def test_seed_example_uses_sample_std() -> None:
    # rewards 0.9, 0.3, 0.8, 0.2: mean 0.55, deviations +0.35, -0.25, +0.25, -0.35.
    # sum of squares 0.1225 + 0.0625 + 0.0625 + 0.1225 = 0.37.
    # sample std sqrt(0.37 / 3) = 0.351188; + eps 1e-4 = 0.351288.
    # A = 0.35 / 0.351288 = 0.99633, 0.25 / 0.351288 = 0.71167.
    out = group_advantages(torch.tensor([0.9, 0.3, 0.8, 0.2]), group_size=4)
    expected = torch.tensor([0.99633, -0.71167, 0.71167, -0.99633])
    torch.testing.assert_close(out.advantages, expected, atol=1e-4, rtol=0)
    assert out.advantages.dtype == torch.float32
    assert out.frac_zero_std == 0.0
    assert out.reward_std_mean == pytest.approx(0.351188, abs=1e-5)
    # Population std sqrt(0.37 / 4) = 0.304138 would give 0.35 / 0.304238 = 1.15042: not us.
    population = torch.tensor([1.15042, -0.82173, 0.82173, -1.15042])
    assert not torch.allclose(out.advantages, population, atol=1e-2)


def test_nan_rewards_left_out_of_group_stats() -> None:
    # valid rewards 1.0, 0.0, 0.5: mean 0.5, deviations 0.5, -0.5, 0; sum of squares 0.5;
    # sample std sqrt(0.5 / 2) = 0.5; A = 0.5 / 0.5001 = 0.99980. The NaN row gets 0.
    out = group_advantages(torch.tensor([1.0, NAN, 0.0, 0.5]), group_size=4)
    expected = torch.tensor([0.99980, 0.0, -0.99980, 0.0])
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)
    assert out.advantages[1].item() == 0.0
    assert not torch.isnan(out.advantages).any()


def test_groups_without_signal_get_exact_zero_and_are_counted() -> None:
    rewards = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # signal
            [0.7, 0.7, 0.7, 0.7],  # all equal
            [0.1, 0.1, NAN, 0.1],  # all valid equal
            [NAN, NAN, NAN, 2.0],  # a single valid reward
        ]
    ).reshape(-1)
    out = group_advantages(rewards, group_size=4)
    adv = out.advantages.view(4, 4)
    assert torch.equal(adv[1:], torch.zeros(3, 4))  # exact zeros, not eps-noise
    assert adv[0, 0] > 0
    assert out.frac_zero_std == pytest.approx(3 / 4)


def test_scale_batch_divides_by_batch_std() -> None:
    # groups [1, 0] and [1, 1]. Centred per group: +0.5, -0.5, 0, 0.
    # batch of valid rewards 1, 0, 1, 1: mean 0.75, squares 0.0625 + 0.5625 + 0.0625 + 0.0625
    # = 0.75, sample std sqrt(0.75 / 3) = 0.5; A = 0.5 / 0.5001 = 0.99980.
    out = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2, scale="batch")
    torch.testing.assert_close(
        out.advantages, torch.tensor([0.99980, -0.99980, 0.0, 0.0]), atol=1e-5, rtol=0
    )
    # group scale differs: group std sqrt(0.5 / 1) = 0.70711 -> 0.5 / 0.70721 = 0.70700.
    grp = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2, scale="group")
    assert grp.advantages[0].item() == pytest.approx(0.70700, abs=1e-4)


def test_scale_none_only_centres() -> None:
    # mean 0.55: 0.9 - 0.55 = 0.35, 0.3 - 0.55 = -0.25, ...
    out = group_advantages(torch.tensor([0.9, 0.3, 0.8, 0.2]), group_size=4, scale="none")
    torch.testing.assert_close(
        out.advantages, torch.tensor([0.35, -0.25, 0.25, -0.35]), atol=1e-6, rtol=0
    )
    dr = dr_grpo_advantages(torch.tensor([0.9, 0.3, 0.8, 0.2]), group_size=4)
    assert torch.equal(dr.advantages, out.advantages)


def test_groups_are_independent() -> None:
    # group 2 is group 1 shifted by +10 and scaled by 2: same z-scores up to eps.
    out = group_advantages(torch.tensor([1.0, 2.0, 3.0, 12.0, 14.0, 16.0]), group_size=3)
    a, b = out.advantages.view(2, 3)
    # group 1: mean 2, sample std 1 -> A = +-1 / 1.0001 = +-0.99990.
    torch.testing.assert_close(a, torch.tensor([-0.99990, 0.0, 0.99990]), atol=1e-5, rtol=0)
    assert math.isclose(b[2].item(), 2 / 2.0001, abs_tol=1e-5)


def test_registry_and_errors() -> None:
    r = torch.tensor([0.9, 0.3, 0.8, 0.2])
    assert {"grpo", "dr_grpo"} <= set(ADVANTAGE_ESTIMATORS)
    assert torch.equal(
        compute_advantages("grpo", r, 4).advantages, group_advantages(r, 4).advantages
    )
    with pytest.raises(ValueError, match="valid names: dr_grpo, grpo"):
        compute_advantages("nope", r, 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(r, 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(r, 4, scale="rank")  # type: ignore[arg-type]
