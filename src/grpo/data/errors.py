"""Errors a user can cause through their data."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset cannot be read or has rows the trainer cannot use.

    The message names the file (or dataset), the row and the column. `problems` holds one line
    per problem found (the message shows the first few).
    """

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]
