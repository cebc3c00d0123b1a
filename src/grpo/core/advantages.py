"""Advantages from the rewards of a group of completions of the same prompt.

Layout convention: the batch is group-contiguous. Rows ``[g*G:(g+1)*G]`` are the G completions of
prompt g, so a reward vector of shape [B] reshapes to [B/G, G] without any index bookkeeping.

Rewards may be NaN, meaning "could not be scored" (a reward function returned None). A NaN reward
is left out of its group's mean and std and gets advantage 0, so it neither pushes nor pulls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageOutput",
    "compute_advantages",
    "dr_grpo_advantages",
    "group_advantages",
    "grpo_advantages",
]

Scale = Literal["group", "batch", "none"]


@dataclass(frozen=True)
class AdvantageOutput:
    """Advantages and the group statistics worth logging.

    advantages: [B] float32, 0 for NaN rewards and for groups without reward variance.
    frac_zero_std: fraction of groups that carry no learning signal: fewer than 2 valid rewards,
        or all valid rewards exactly equal (max - min == 0, no tolerance).
    reward_std_mean: mean over groups with >= 2 valid rewards of the group's sample std
        (0.0 when there is no such group).
    """

    advantages: Tensor
    frac_zero_std: float
    reward_std_mean: float


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: Scale = "group",
    eps: float = 1e-4,
) -> AdvantageOutput:
    """Group-relative advantages, DeepSeekMath (arXiv 2402.03300) section 4.1.2 (outcome
    supervision): ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``.

    Args:
        rewards: [B] rewards, B = num_prompts * G, group-contiguous; NaN = "not scored".
        group_size: G, completions per prompt.
        scale: "group" divides by the group's std (the paper); "batch" divides by the std of all
            valid rewards in the batch (still centred per group); "none" only centres (Dr. GRPO,
            arXiv 2503.20783 section 3.1, which argues the std division biases towards
            too-easy/too-hard prompts).
        eps: added to the std so near-constant groups do not explode.

    Returns:
        AdvantageOutput with advantages [B] float32.

    The std is the *sample* std (Bessel's correction, divide by n-1), the same as
    ``torch.Tensor.std()`` which TRL's GRPOTrainer uses, so users can compare numbers with the
    most common reference implementation. (The seed's worked example "std 0.32" for rewards
    0.9, 0.3, 0.8, 0.2 is neither: sample std is 0.351, population std 0.304.)

    A group whose valid rewards are all equal gets exactly 0, not eps-scaled rounding noise:
    the mean of equal floats need not round back to the same float.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch size {rewards.numel()} is not a multiple of group_size {group_size}; "
            "the batch must hold whole groups"
        )
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")

    # float64 for the statistics: rewards are few, and exact equality tests need no fp32 noise.
    r = rewards.detach().to(torch.float64).view(-1, group_size)  # [B/G, G]
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1)  # [B/G]
    r0 = torch.where(valid, r, 0.0)
    mean = r0.sum(dim=1) / n.clamp(min=1)
    centred = torch.where(valid, r - mean[:, None], 0.0)
    # Sample variance (Bessel): sum of squared deviations / (n - 1).
    std = (centred.square().sum(dim=1) / (n - 1).clamp(min=1)).sqrt()

    inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
    r_max = torch.where(valid, r, -inf).amax(dim=1)
    r_min = torch.where(valid, r, inf).amin(dim=1)
    no_signal = (n < 2) | (r_max - r_min == 0)  # [B/G]

    if scale == "group":
        adv = centred / (std[:, None] + eps)
    elif scale == "batch":
        flat = r[valid]
        batch_std = flat.std() if flat.numel() >= 2 else r.new_zeros(())
        adv = centred / (batch_std + eps)
    else:
        adv = centred
    adv = torch.where(no_signal[:, None] | ~valid, 0.0, adv)

    has_std = n >= 2
    std_mean = float(std[has_std].mean()) if bool(has_std.any()) else 0.0
    return AdvantageOutput(
        advantages=adv.reshape(-1).to(torch.float32),
        frac_zero_std=float(no_signal.to(torch.float64).mean()),
        reward_std_mean=std_mean,
    )


def grpo_advantages(
    rewards: Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-4
) -> AdvantageOutput:
    """GRPO group z-score (DeepSeekMath section 4.1.2). rewards: [B] -> advantages [B].
    ``scale`` picks the std of the denominator (see ``group_advantages``)."""
    return group_advantages(rewards, group_size, scale=scale, eps=eps)


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> AdvantageOutput:
    """Dr. GRPO (arXiv 2503.20783 eq. 3 / section 3.1): centre by group mean, no std division.
    rewards: [B] -> advantages [B]."""
    return group_advantages(rewards, group_size, scale="none")


# Name -> estimator(rewards [B], group_size, **kw) -> AdvantageOutput. Add variants here.
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., AdvantageOutput]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def compute_advantages(
    name: str, rewards: Tensor, group_size: int, **kwargs: object
) -> AdvantageOutput:
    """Look up an estimator by name and apply it. rewards: [B] -> AdvantageOutput."""
    try:
        estimator = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; valid names: {valid}") from None
    return estimator(rewards, group_size, **kwargs)
