"""Which groups and completions enter the loss: DAPO's dynamic sampling and truncation masking.

Both are pure helpers; the loop decides what to do with their answers (resample, drop rows).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["informative_groups", "mask_truncated"]


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Groups whose rewards differ, the ones that carry a policy gradient.

    DAPO (arXiv 2503.14476) section 3.2, dynamic sampling: the DAPO objective's constraint
    ``0 < |{o_i : o_i correct}| < G`` keeps a prompt only when its group is neither all right
    nor all wrong. For general (non-binary) rewards that is "the group's rewards are not all
    equal": a group whose rewards are all equal has advantage 0 under every group-centred
    estimator, so it contributes nothing but KL and noise to the update.

    NaN-aware, with the same definition as ``AdvantageOutput.frac_zero_std``: a group is
    informative iff it has >= 2 valid (non-NaN) rewards and not all of them are equal (exact
    comparison, no tolerance). So ``1 - informative.float().mean() == frac_zero_std``.

    Args:
        rewards: [B] group-contiguous rewards (rows g*G .. g*G+G-1 are group g); NaN = unscored.
        group_size: G.

    Returns:
        [B/G] bool. Expand to rows with ``keep.repeat_interleave(group_size)``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch size {rewards.numel()} is not a multiple of group_size {group_size}; "
            "the batch must hold whole groups"
        )
    r = rewards.detach().view(-1, group_size)
    valid = ~torch.isnan(r)
    inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
    r_max = torch.where(valid, r, -inf).amax(dim=1)
    r_min = torch.where(valid, r, inf).amin(dim=1)
    return (valid.sum(dim=1) >= 2) & (r_max - r_min != 0)


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """Drop truncated completions from the loss: their rows of ``mask`` become all 0.

    DAPO (arXiv 2503.14476) section 3.4, overlong filtering: a completion cut off by the length
    cap is not necessarily wrong, so scoring it as a failure adds reward noise; masking it keeps
    it out of the gradient. Only the loss mask changes: the completion's reward still counts in
    its group's statistics (the advantages of the other completions are unchanged), and its
    tokens may still be logged.

    Args:
        mask: [B, T] completion mask (bool, int or float; the dtype is kept).
        truncated: [B] bool, True where generation stopped at the length cap
            (finish_reason == "length").

    Returns:
        [B, T] mask with truncated rows zeroed (a new tensor).

    After masking, compute the loss normaliser from the masked mask (token count for "dapo"),
    so that dropped rows do not dilute the others.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    if truncated.shape != mask.shape[:1]:
        raise ValueError(
            f"truncated must be [B] = [{mask.shape[0]}], got shape {tuple(truncated.shape)}"
        )
    keep = ~truncated.to(device=mask.device, dtype=torch.bool)
    return torch.where(keep[:, None], mask, torch.zeros((), dtype=mask.dtype, device=mask.device))
