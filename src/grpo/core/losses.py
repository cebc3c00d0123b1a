"""Policy losses by name, and the defaults each one is documented with.

Every loss takes the same arguments as :func:`grpo.core.grpo_loss` (current / old / reference
log-probs [B, T], advantages [B] or [B, T], the mask, beta, the clip range, an aggregation
with its whole-batch normaliser, optional TIS token weights and an entropy bonus) and returns
``(loss, LossStats)``, so the trainer reduces, accumulates and all-reduces them identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from grpo.core.cispo import CISPO_EPS_HIGH, CISPO_EPS_LOW, cispo_loss
from grpo.core.gspo import GSPO_EPS_HIGH, GSPO_EPS_LOW, gspo_loss
from grpo.core.policy_loss import LossStats, grpo_loss

__all__ = ["POLICY_LOSSES", "POLICY_LOSS_DEFAULTS", "LossDefaults", "policy_loss_fn"]

PolicyLoss = Callable[..., tuple[Tensor, LossStats]]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo_clip": grpo_loss,  # DeepSeekMath eq. 3 (PPO's clipped surrogate per token)
    "gspo": gspo_loss,  # arXiv 2507.18071
    "cispo": cispo_loss,  # arXiv 2506.13585
}


@dataclass(frozen=True)
class LossDefaults:
    """The clip range and aggregation a loss is published with."""

    eps_low: float
    eps_high: float
    aggregation: str

    def as_dict(self) -> dict[str, Any]:
        return {"eps_low": self.eps_low, "eps_high": self.eps_high, "aggregation": self.aggregation}


POLICY_LOSS_DEFAULTS: dict[str, LossDefaults] = {
    # PPO's 0.2 (DeepSeekMath); the sequence mean of eq. 3
    "ppo_clip": LossDefaults(0.2, 0.2, "grpo"),
    # section 5.1 of the GSPO paper; the mean over sequences of eq. 5
    "gspo": LossDefaults(GSPO_EPS_LOW, GSPO_EPS_HIGH, "grpo"),
    # no lower bound, weight cap 5 (see grpo.core.cispo); the token mean of eq. 4
    "cispo": LossDefaults(CISPO_EPS_LOW, CISPO_EPS_HIGH, "dapo"),
}


def policy_loss_fn(name: str) -> PolicyLoss:
    """The loss registered as ``name``; an unknown name lists the valid ones."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; valid names: {', '.join(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]
