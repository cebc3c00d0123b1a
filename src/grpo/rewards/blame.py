"""What a reward call's outcome becomes: checked values, or a failure blamed on one completion.

The single place that decides about user code. It checks what a function returned (one
finite number or None per completion); when the function raised on the batch, it calls it
again on each completion alone to find the one to blame, then either stops the run with a
`RewardError` naming the function, the completion, its dataset row, its prompt and the line of
the function that raised (`on_error="raise"`), or gives the failed completions None and counts
them (`on_error="skip"`).
"""

from __future__ import annotations

import logging
import math
import numbers
import traceback
from pathlib import Path
from typing import Any

from grpo.rewards.batch import Batch, call_arguments, make_call
from grpo.rewards.calling import Outcome, call_all
from grpo.rewards.errors import RewardError
from grpo.rewards.spec import RewardFunction

__all__ = ["as_float", "check_output", "resolve_outcome"]

logger = logging.getLogger("grpo.rewards")

_RAISE_HINT = (
    "return None for a completion it cannot score instead of raising, or set on_error: skip "
    "for this reward to give the completions it fails on None and keep training"
)


def resolve_outcome(
    rf: RewardFunction, batch: Batch, outcome: Outcome
) -> tuple[list[float | None], int]:
    """One value per completion from `rf`'s call on the whole batch, and the number of
    completions it failed on (on_error="skip"); raises `RewardError` when the run must stop."""
    if outcome.timed_out:
        message = (
            f"reward function {rf.name!r} did not return within timeout_s={rf.timeout_s:g} s "
            f"while scoring {batch.describe()}"
        )
        if rf.on_error == "raise":
            raise RewardError(
                message,
                function=rf.name,
                hint="raise timeout_s, make the function faster, or set on_error: skip to give "
                "the batch None and keep training",
            )
        _warn(rf, message + "; its completions get None", None)
        return [None] * len(batch.completions), len(batch.completions)
    if outcome.error is None:
        return check_output(rf, outcome.value, batch), 0

    # It raised on the batch: find the completions it raises on alone.
    rows = [batch.row(i) for i in range(len(batch.completions))]
    per_row = _call_rows(rf, rows, stop_at_first_failure=rf.on_error == "raise")
    failures = [i for i, o in enumerate(per_row) if o.error is not None or o.timed_out]
    if rf.on_error == "raise":
        _raise_blamed(rf, batch, outcome, per_row, failures)
    values: list[float | None] = []
    for i, row_outcome in enumerate(per_row):
        if i in failures:
            what = (
                f"raised {exception_text(row_outcome.error)}{raised_where(row_outcome.error)}"
                if row_outcome.error is not None
                else "timed out"
            )
            _warn(rf, f"reward function {rf.name!r} {what} on {batch.describe_item(i)}; it "
                  "gets None", row_outcome.error)  # fmt: skip
            values.append(None)
        else:
            values.extend(check_output(rf, row_outcome.value, rows[i]))
    return values, len(failures)


def _raise_blamed(
    rf: RewardFunction,
    batch: Batch,
    outcome: Outcome,
    per_row: list[Outcome],
    failures: list[int],
) -> None:
    if failures:
        i = failures[0]
        row_outcome = per_row[i]
        what = (
            f"raised {exception_text(row_outcome.error)}"
            if row_outcome.error is not None
            else f"did not return within timeout_s={rf.timeout_s:g} s"
        )
        cause = row_outcome.error or outcome.error
        text = f"on {batch.describe_item(i)}, in a batch of {len(batch.completions)}"
        row, dataset_row = i, batch.dataset_row(i)
    else:
        what = f"raised {exception_text(outcome.error)}"
        cause = outcome.error
        text = f"on {batch.describe()}, though on each completion alone it does not"
        row = dataset_row = None
    raise RewardError(
        f"reward function {rf.name!r} {what}{raised_where(cause)}\n  {text}",
        function=rf.name,
        row=row,
        dataset_row=dataset_row,
        hint=_RAISE_HINT,
    ) from cause


def _call_rows(
    rf: RewardFunction, rows: list[Batch], *, stop_at_first_failure: bool
) -> list[Outcome]:
    calls = [make_call(rf, call_arguments(rf, row)) for row in rows]
    if rf.is_async or not stop_at_first_failure:
        # Async calls are concurrent, so there is nothing to save by stopping early.
        return call_all(calls)
    outcomes: list[Outcome] = []
    for c in calls:
        outcomes.extend(call_all([c]))
        if outcomes[-1].error is not None or outcomes[-1].timed_out:
            break
    return outcomes


def _warn(rf: RewardFunction, message: str, error: BaseException | None) -> None:
    """One line on the console per failure (the first few); the traceback only at DEBUG."""
    if not rf.take_warning():
        return
    if rf.warnings_left == 0:
        message += (
            f". Further failures of {rf.name!r} are only counted, in rewards/{rf.name}/errors"
        )
    logger.warning(message)
    if error is not None:
        logger.debug("traceback of %r", rf.name, exc_info=(type(error), error, error.__traceback__))


def exception_text(error: BaseException | None) -> str:
    if error is None:
        return "nothing"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def raised_where(error: BaseException | None) -> str:
    """ " (file.py line N, in fn)" for the innermost frame of the error's traceback, the line
    of the user's function that raised; "" when there is no traceback."""
    if error is None or error.__traceback__ is None:
        return ""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" ({Path(frame.filename).name} line {frame.lineno}, in {frame.name})"


def check_output(rf: RewardFunction, output: Any, batch: Batch) -> list[float | None]:
    """The values a function returned for `batch`, checked: one finite number or None each."""
    expected = len(batch.completions)
    if hasattr(output, "tolist") and not isinstance(output, str | bytes):
        output = output.tolist()  # tensors and arrays
    if not isinstance(output, list | tuple):
        raise RewardError(
            f"reward function {rf.name!r} returned a {type(output).__name__}; it must return a "
            f"list with one float or None per completion ({expected} here)",
            function=rf.name,
        )
    if len(output) != expected:
        raise RewardError(
            f"reward function {rf.name!r} returned {len(output)} values for {expected} "
            "completions; it must return exactly one float or None per completion",
            function=rf.name,
        )
    values: list[float | None] = []
    for i, value in enumerate(output):
        if value is None:
            values.append(None)
            continue
        number = as_float(value)
        if number is None:
            raise RewardError(
                f"reward function {rf.name!r} returned {value!r} (a {type(value).__name__}) for "
                f"{batch.describe_item(i)}; rewards must be numbers (int, float or bool) or None",
                function=rf.name,
                row=i,
                dataset_row=batch.dataset_row(i),
            )
        if not math.isfinite(number):
            raise RewardError(
                f"reward function {rf.name!r} returned {number} for {batch.describe_item(i)}; "
                "rewards must be finite: return None to mean 'cannot score this completion'",
                function=rf.name,
                row=i,
                dataset_row=batch.dataset_row(i),
            )
        values.append(number)
    return values


def as_float(value: Any) -> float | None:
    """A reward value as a float; None when it is not a number."""
    # 0-d tensors and numpy scalars (including numpy.bool_) become Python values first.
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None
