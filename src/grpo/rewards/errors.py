"""Errors a user can cause through their reward functions (defined in the project-wide family)."""

from __future__ import annotations

from grpo.errors import RewardError, RewardSpecError

__all__ = ["RewardError", "RewardSpecError"]
