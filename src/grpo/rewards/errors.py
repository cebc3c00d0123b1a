"""Errors a user can cause through their reward functions."""

from __future__ import annotations

__all__ = ["RewardError", "RewardSpecError"]


class RewardSpecError(ValueError):
    """A reward spec ("accuracy", "pkg.mod:fn", "path/to/file.py:fn") cannot be resolved, or
    its settings (weight, kwargs, timeout_s, on_error) are invalid."""


class RewardError(RuntimeError):
    """A reward function raised, timed out, or returned something that cannot be used as rewards.

    `function` is the reward function's name. When it raised, the original exception is the
    `__cause__` (its traceback is printed above this one); `row` is then the index in the batch
    of the completion it fails on, and `dataset_row` that completion's dataset row when the
    trainer passed row ids (both None when no single completion is to blame).
    """

    def __init__(
        self,
        message: str,
        *,
        function: str,
        row: int | None = None,
        dataset_row: int | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.row = row
        self.dataset_row = dataset_row
