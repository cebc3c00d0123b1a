"""The errors a user can act on: one family, each saying what is wrong and what to do.

Every layer raises these (this module imports nothing, so ``core``, ``rewards`` and ``data``
may use it). The command line prints ``error: <message>`` in at most three lines and exits with
``exit_code``: 2 for bad input (a config key, a data file, a reward spec, a model path, a run
directory: fix it and run again), 1 for a failure while running (a reward function that
raised, a model that would not load). Library users get the exception itself.

The built-in exception each one also derives from (``ValueError``, ``RuntimeError``,
``OSError``) is kept so code that caught the old errors still catches the new ones.
"""

from __future__ import annotations

__all__ = [
    "ChatTemplateError",
    "ConfigError",
    "DatasetError",
    "GrpoError",
    "InputError",
    "MissingPackageError",
    "ModelError",
    "ResourceError",
    "RewardError",
    "RewardSpecError",
    "RunDirError",
]


class GrpoError(Exception):
    """A problem with a message that names its culprit (key, file, line, column, function).

    ``message`` says what is wrong; ``hint``, when given, what to do about it. ``str(e)`` is
    the message, then the hint on a line of its own.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  {self.hint}"

    def brief(self, max_lines: int = 3) -> list[str]:
        """At most ``max_lines`` lines for a console: the message's first lines, then the hint."""
        lines = [line for line in self.message.splitlines() if line.strip()] or [""]
        hint = [f"  {self.hint}"] if self.hint else []
        room = max_lines - len(hint)
        if len(lines) > room:
            more = len(lines) - room + 1
            lines = [*lines[: room - 1], f"  ... ({more} more lines; --debug shows them all)"]
        return (lines + hint)[:max_lines]


class InputError(GrpoError):
    """Bad input: the run did not start (or stopped before any heavy work); fix and rerun."""

    exit_code = 2


class ConfigError(InputError, ValueError):
    """A configuration problem: the message names the key (or the config file and line)."""


class DatasetError(InputError, ValueError):
    """A dataset cannot be read or has rows the trainer cannot use.

    The message names the file (or dataset), the row and the column. ``problems`` holds one
    line per problem found; the message shows the first few, ``brief()`` the first one and a
    count of the rest.
    """

    def __init__(
        self, message: str, *, problems: list[str] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems if problems is not None else [message]

    def brief(self, max_lines: int = 3) -> list[str]:
        if len(self.problems) <= 1:
            return super().brief(max_lines)
        first = self.problems[0]
        rest = len(self.problems) - 1
        lines = [first, f"  ... and {rest} more problem{'s' if rest > 1 else ''} like it"]
        if self.hint:
            lines.append(f"  {self.hint}")
        return lines[:max_lines]


class ChatTemplateError(DatasetError):
    """A chat prompt cannot be rendered with the tokenizer's chat template."""


class RewardSpecError(InputError, ValueError):
    """A reward spec ("accuracy", "pkg.mod:fn", "path/to/file.py:fn") cannot be resolved, or
    its settings (weight, kwargs, timeout_s, on_error) are invalid."""


class RewardError(GrpoError, RuntimeError):
    """A reward function raised, timed out, or returned something that cannot be used as rewards.

    ``function`` is the reward function's name. When it raised, the original exception is the
    ``__cause__``; ``row`` is then the index in the batch of the completion it fails on, and
    ``dataset_row`` that completion's dataset row when the trainer passed row ids (both None
    when no single completion is to blame).
    """

    def __init__(
        self,
        message: str,
        *,
        function: str,
        row: int | None = None,
        dataset_row: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.function = function
        self.row = row
        self.dataset_row = dataset_row


class ModelError(InputError, OSError):
    """The model (or its tokenizer) named by ``model.name_or_path`` cannot be found or read."""


class MissingPackageError(InputError, ImportError):
    """The configuration needs a package that does not import (vLLM for rollout.engine=vllm)."""


class RunDirError(InputError, OSError):
    """The run directory cannot be used: not writable, under a file, or in use by another run."""


class ResourceError(GrpoError, RuntimeError):
    """The run needs more of something (memory, KV cache) than it was given."""
