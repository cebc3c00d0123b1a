"""A batch of completions to score, and the arguments of one reward function's call on it.

Also how errors describe a batch or one completion of it: the dataset row and a preview of the
prompt, so that a message points at the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpo.rewards.calling import Call
from grpo.rewards.errors import RewardError
from grpo.rewards.extract import completion_text
from grpo.rewards.spec import RewardFunction

__all__ = ["TRAINER_COLUMNS", "Batch", "call_arguments", "make_call"]

# Keyword arguments the trainer gives reward functions besides the dataset columns (see
# docs/rewards.md): the group of each completion, its token ids and their count.
TRAINER_COLUMNS = ("group_ids", "completion_ids", "completion_lengths")

_PROMPT_PREVIEW_CHARS = 200


@dataclass
class Batch:
    prompts: list[Any]
    completions: list[Any]
    columns: dict[str, Sequence[Any]]
    row_ids: Sequence[int] | None

    def describe(self) -> str:
        text = f"a batch of {len(self.completions)} completions"
        if self.row_ids is not None and len(self.row_ids) > 0:
            text += f" (first dataset row {self.row_ids[0]})"
        if self.prompts:
            text += f"; first prompt: {preview(self.prompts[0])}"
        return text

    def describe_item(self, i: int) -> str:
        text = f"completion {i} of the batch"
        if self.row_ids is not None:
            text += f" (dataset row {self.row_ids[i]})"
        return f"{text}; prompt: {preview(self.prompts[i])}"

    def dataset_row(self, i: int) -> int | None:
        return None if self.row_ids is None else int(self.row_ids[i])

    def row(self, i: int) -> Batch:
        """The batch of completion i alone."""
        return Batch(
            self.prompts[i : i + 1],
            self.completions[i : i + 1],
            {k: list(v[i : i + 1]) for k, v in self.columns.items()},
            None if self.row_ids is None else self.row_ids[i : i + 1],
        )


def call_arguments(rf: RewardFunction, batch: Batch) -> dict[str, Any]:
    """The keyword arguments of `rf`'s call on `batch`; raises when the batch cannot supply
    what it needs."""
    arguments: dict[str, Any] = {
        "prompts": list(batch.prompts),
        "completions": list(batch.completions),
    }
    for column, values in batch.columns.items():
        arguments[column] = list(values)
    clash = sorted(set(rf.kwargs) & set(batch.columns))
    if clash:
        raise RewardError(
            f"reward function {rf.name!r}: its kwargs {clash} have the same names as dataset "
            "columns; rename the column or drop the kwarg",
            function=rf.name,
        )
    arguments.update(rf.kwargs)
    missing = sorted(rf.required_columns() - set(arguments))
    if missing:
        raise RewardError(
            f"reward function {rf.name!r} needs columns {missing} but the batch has "
            f"{sorted(batch.columns) or 'no extra columns'}; add them to the dataset",
            function=rf.name,
        )
    if rf.accepted_keywords is not None:
        arguments = {k: v for k, v in arguments.items() if k in rf.accepted_keywords}
    return arguments


def make_call(rf: RewardFunction, arguments: dict[str, Any]) -> Call:
    return Call(rf.fn, arguments, rf.timeout_s, rf.is_async, label=f"reward-{rf.name}")


def preview(prompt: Any) -> str:
    """A prompt in one short line, quoted. For a chat prompt the last message is the question;
    the system prompt in front of it is the same in every row and tells the reader nothing."""
    try:
        if isinstance(prompt, list | tuple) and prompt:
            text = completion_text([prompt[-1]])
        else:
            text = completion_text(prompt)
    except TypeError:
        text = repr(prompt)
    text = " ".join(text.split())
    if len(text) > _PROMPT_PREVIEW_CHARS:
        text = text[: _PROMPT_PREVIEW_CHARS - 3] + "..."
    return repr(text)
