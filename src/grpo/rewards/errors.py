"""Errors a user can cause through their reward functions."""

from __future__ import annotations

__all__ = ["RewardError", "RewardSpecError"]


class RewardSpecError(ValueError):
    """A reward spec ("accuracy", "pkg.mod:fn", "path/to/file.py:fn") cannot be resolved."""


class RewardError(RuntimeError):
    """A reward function raised or returned something that cannot be used as rewards.

    `function` is the reward function's name; when it raised, the original exception is the
    `__cause__` (its traceback is printed under this one).
    """

    def __init__(self, message: str, *, function: str) -> None:
        super().__init__(message)
        self.function = function
