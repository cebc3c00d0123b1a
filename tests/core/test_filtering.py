"""Dynamic-sampling group filter and truncation masking against hand values."""

import math

import pytest
import torch

from grpo.core import group_advantages, informative_groups, mask_truncated

NAN = math.nan


def test_informative_groups_by_hand() -> None:
    rewards = torch.tensor(
        [
            [1.0, 0.0],  # differ: informative
            [1.0, 1.0],  # all right
            [NAN, 1.0],  # one valid reward
            [NAN, NAN],  # none
            [0.5, NAN],  # one valid reward
            [2.0, 3.0],  # differ (non-binary rewards)
        ]
    ).reshape(-1)
    keep = informative_groups(rewards, 2)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, False, False, False, False, True]
    # same definition as the advantage statistics
    frac = group_advantages(rewards, 2).frac_zero_std
    assert 1 - keep.float().mean().item() == pytest.approx(frac)
    # rows of the kept groups, for the loop
    assert keep.repeat_interleave(2).tolist()[:4] == [True, True, False, False]
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(rewards, 5)


def test_mask_truncated() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = mask_truncated(mask, torch.tensor([False, True, False]))
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert out.dtype == mask.dtype and mask[1].sum() == 3  # input untouched
    as_bool = mask_truncated(mask.bool(), torch.tensor([True, False, False]))
    assert as_bool.dtype == torch.bool and as_bool.sum() == 4
    with pytest.raises(ValueError, match="truncated must be"):
        mask_truncated(mask, torch.tensor([True, False]))
