"""Group advantages checked against numbers worked out by hand."""

import math

import pytest
import torch

from grpo.core import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dr_grpo_advantages,
    group_advantages,
    process_advantages,
    rloo_advantages,
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
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "batch_std", "rloo"}
    assert torch.equal(
        compute_advantages("grpo", r, 4).advantages, group_advantages(r, 4).advantages
    )
    with pytest.raises(ValueError, match="valid names: batch_std, dr_grpo, grpo, rloo"):
        compute_advantages("nope", r, 4)
    with pytest.raises(ValueError, match="process_advantages"):
        compute_advantages("process", r, 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(r, 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(r, 4, scale="rank")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_every_estimator_has_the_uniform_call(name: str) -> None:
    # The trainer's call, whatever the name: (rewards [B], G, scale=..., eps=...).
    r = torch.tensor([0.9, 0.3, 0.8, 0.2, 1.0, 1.0, 1.0, 1.0])
    out = compute_advantages(name, r, 4, scale="group", eps=1e-4)
    assert out.advantages.shape == (8,) and out.advantages.dtype == torch.float32
    assert torch.equal(out.advantages[4:], torch.zeros(4))  # all-equal group: exactly 0
    assert out.frac_zero_std == 0.5
    # every estimator is centred per group: the advantages of a group sum to 0
    assert abs(out.advantages[:4].sum().item()) < 1e-6


def test_dr_grpo_and_batch_std_ignore_scale() -> None:
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    for name, scale in (("dr_grpo", "none"), ("batch_std", "batch")):
        want = group_advantages(r, 2, scale=scale).advantages  # type: ignore[arg-type]
        for given in ("group", "batch", "none"):
            got = compute_advantages(name, r, 2, scale=given, eps=1e-4).advantages
            assert torch.equal(got, want), (name, given)


def test_batch_std_by_hand() -> None:
    # Same numbers as test_scale_batch_divides_by_batch_std: centred +-0.5 in group 1, 0 in
    # group 2; batch sample std of (1, 0, 1, 1) = 0.5; 0.5 / 0.5001 = 0.99980.
    out = compute_advantages("batch_std", torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, eps=1e-4)
    torch.testing.assert_close(
        out.advantages, torch.tensor([0.99980, -0.99980, 0.0, 0.0]), atol=1e-5, rtol=0
    )


def test_rloo_by_hand() -> None:
    rewards = torch.tensor(
        [
            [1.0, 0.0, 0.5, NAN],  # n = 3, sum 1.5
            [3.0, NAN, NAN, NAN],  # one valid reward: no leave-one-out baseline
            [2.0, 2.0, 2.0, 2.0],  # all equal
            [1.0, 0.0, 0.0, 0.0],  # n = 4, sum 1
        ]
    ).reshape(-1)
    out = rloo_advantages(rewards, 4)
    # group 1: A_i = r_i - (1.5 - r_i) / 2 -> 1 - 0.25 = 0.75, 0 - 0.75 = -0.75,
    #          0.5 - 0.5 = 0; the NaN row 0.
    # group 4: 1 - 0/3 = 1; 0 - 1/3 = -0.333333 (three times).
    expected = torch.tensor(
        [
            [0.75, -0.75, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [1.0, -1 / 3, -1 / 3, -1 / 3],
        ]
    ).reshape(-1)
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)
    assert out.frac_zero_std == 0.5  # groups 2 and 3
    # equals n/(n-1) * (r - mean): group 4 mean 0.25 -> 4/3 * 0.75 = 1.0
    assert compute_advantages("rloo", rewards, 4).advantages.equal(out.advantages)


def test_process_advantages_by_hand() -> None:
    # Group 1 (G = 2):
    #   completion 0: steps rewards 1, 0 ending at tokens 2 and 5 (exclusive), length 6
    #   completion 1: one step, reward 1, ending at token 3, length 4
    # All steps of the group: R = {1, 0, 1}, mean 2/3, deviations 1/3, -2/3, 1/3,
    # sum of squares 6/9, sample std sqrt((6/9) / 2) = sqrt(1/3) = 0.577350 (eps = 0 here).
    # Normalised: 1 -> (1/3) / 0.57735 = 0.577350;  0 -> (-2/3) / 0.57735 = -1.154701.
    # Token t gets the sum over steps ending after it (end > t):
    #   completion 0: t = 0, 1 -> 0.577350 - 1.154701 = -0.577350; t = 2, 3, 4 -> -1.154701;
    #                 t = 5 -> 0 (no step ends at or after it)
    #   completion 1: t = 0, 1, 2 -> 0.577350; t = 3 -> 0; t = 4, 5 padding -> 0
    # Group 2: completion 2 has an unscored step (None) and one valid step; completion 3 has no
    # steps: only one valid step in the group, no signal -> all 0.
    out = process_advantages(
        step_rewards=[[1.0, 0.0], [1.0], [None, 1.0], []],
        step_ends=[[2, 5], [3], [1, 2], []],
        group_size=2,
        num_tokens=[6, 4, 2, 3],
        eps=0.0,
    )
    a, b = 0.577350, -1.154701
    expected = torch.tensor(
        [
            [a + b, a + b, b, b, b, 0.0],
            [a, a, a, 0.0, 0.0, 0.0],
            [0.0] * 6,
            [0.0] * 6,
        ]
    )
    assert out.advantages.shape == (4, 6) and out.advantages.dtype == torch.float32
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)
    assert out.frac_zero_std == 0.5


def test_process_advantages_details() -> None:
    # Unsorted steps, an end past the completion (clamped to its length 3), an end of 0
    # (touches no token), and one int T for all rows.
    # Group steps: 2 (end 0), 0 (end 9 -> 3), 1 (end 1), 1 (end 2): mean 1, deviations
    # 1, -1, 0, 0, sample std sqrt(2/3) = 0.816497; with eps 0: 2 -> 1.224745, 0 -> -1.224745.
    out = process_advantages([[0.0, 2.0], [1.0, 1.0]], [[9, 0], [2, 1]], 2, num_tokens=3, eps=0.0)
    c = 1.224745
    # row 0: only the reward-0 step (end 3) covers tokens 0..2; the reward-2 step ends at 0.
    # row 1: both steps are normalised to 0.
    expected = torch.tensor([[-c, -c, -c], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="one end offset per step"):
        process_advantages([[1.0]], [[1, 2]], 1, [3])
    with pytest.raises(ValueError, match="multiple of group_size"):
        process_advantages([[1.0]] * 3, [[1]] * 3, 2, [3] * 3)
    with pytest.raises(ValueError, match="integer >= 0"):
        process_advantages([[1.0]], [[-1]], 1, [3])


def test_process_with_one_step_per_completion_at_the_end_is_grpo() -> None:
    # One step per completion ending at its last token: every token gets the completion's
    # normalised reward, i.e. the outcome GRPO advantage broadcast over tokens.
    rewards = [0.9, 0.3, 0.8, 0.2]
    lengths = [3, 1, 2, 4]
    out = process_advantages([[r] for r in rewards], [[n] for n in lengths], 4, lengths)
    grpo = group_advantages(torch.tensor(rewards), 4).advantages
    mask = torch.arange(4)[None] < torch.tensor(lengths)[:, None]
    torch.testing.assert_close(
        out.advantages, torch.where(mask, grpo[:, None], 0.0), atol=1e-6, rtol=0
    )
