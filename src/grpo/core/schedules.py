"""Schedules of scalar coefficients over training steps (pure functions of the step)."""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["beta_at", "lr_lambda_warmup_cosine"]

# Cosine KL schedule (project seed): hold beta_start for the first 10% of steps, anneal by a
# half cosine, hold beta_end from 80% on. A large early beta keeps the policy near the reference
# while rewards are noisy; a small late beta lets it move once it is learning.
_BETA_HOLD_START = 0.1
_BETA_HOLD_END = 0.8


def _cosine(progress: float, start: float, end: float) -> float:
    """Half-cosine from start (progress 0) to end (progress 1), clamped outside [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


def beta_at(
    step: int,
    total_steps: int,
    *,
    schedule: Literal["constant", "cosine"],
    beta: float,
    beta_start: float,
    beta_end: float,
) -> float:
    """KL coefficient at ``step`` (0-based) of ``total_steps``.

    "constant" returns ``beta``. "cosine" returns beta_start while step/total < 0.1, beta_end
    once step/total >= 0.8, and in between
    ``beta_end + (beta_start - beta_end) * (1 + cos(pi * (f - 0.1) / 0.7)) / 2`` with
    f = step/total, so f = 0.45 gives (beta_start + beta_end) / 2.
    """
    if schedule == "constant":
        return beta
    if schedule != "cosine":
        raise ValueError(f"unknown beta schedule {schedule!r}; valid names: constant, cosine")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    f = step / total_steps
    span = _BETA_HOLD_END - _BETA_HOLD_START
    return _cosine((f - _BETA_HOLD_START) / span, beta_start, beta_end)


def lr_lambda_warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """LR multiplier for ``torch.optim.lr_scheduler.LambdaLR``: linear warmup, then cosine decay.

    Warmup: ``(step + 1) / warmup_steps`` for step < warmup_steps, so the first update already
    moves (a multiplier of 0 at step 0 would waste it) and step warmup_steps - 1 reaches 1.
    Then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``, clamped to [0, 1] so steps
    past the end hold min_ratio.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return _cosine((step - warmup_steps) / decay_steps, 1.0, min_ratio)
