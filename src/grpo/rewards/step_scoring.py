"""Calling a step (process) reward function with the same care as an outcome reward.

A step reward returns, for each completion, a list of ``(reward, char_end)`` steps
(``None`` rewards allowed, see ``core.process_advantages``). It is called once on the whole
batch like any reward (timeout, ``async def``, only the arguments it names), and what it
returns is checked before the trainer uses it; a failure names the function and, where one
completion is to blame, that completion.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from grpo.rewards.batch import Batch, call_arguments, make_call
from grpo.rewards.calling import call_all
from grpo.rewards.errors import RewardError
from grpo.rewards.spec import RewardFunction

Steps = list[list[tuple[float | None, int]]]


def score_steps(
    rf: RewardFunction,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    *,
    row_ids: Sequence[int] | None = None,
) -> Steps:
    """``rf``'s steps for each of the B completions, checked: one list per completion of
    ``(reward or None, char_end)`` with integer, non-decreasing ``char_end`` within the text."""
    batch = Batch(list(prompts), list(completions), dict(columns), row_ids)
    (outcome,) = call_all([make_call(rf, call_arguments(rf, batch))])
    if outcome.timed_out:
        raise RewardError(
            f"step reward function {rf.name!r} did not return within timeout_s={rf.timeout_s:g} s "
            f"while scoring {batch.describe()}",
            function=rf.name,
        )
    if outcome.error is not None:
        raise RewardError(
            f"step reward function {rf.name!r} raised {type(outcome.error).__name__}: "
            f"{outcome.error} while scoring {batch.describe()}",
            function=rf.name,
        ) from outcome.error
    return _check_steps(rf, outcome.value, batch)


def _check_steps(rf: RewardFunction, output: Any, batch: Batch) -> Steps:
    n = len(batch.completions)
    if not isinstance(output, Sequence) or isinstance(output, str) or len(output) != n:
        got = f"{len(output)} entries" if isinstance(output, Sequence) else type(output).__name__
        raise RewardError(
            f"step reward function {rf.name!r} must return one list of (reward, char_end) steps "
            f"per completion ({n}), got {got}",
            function=rf.name,
        )
    checked: Steps = []
    for i, steps in enumerate(output):
        where = batch.describe_item(i)
        if not isinstance(steps, Sequence) or isinstance(steps, str):
            raise RewardError(
                f"step reward function {rf.name!r}: {where}: expected a list of (reward, "
                f"char_end) pairs, got {type(steps).__name__}",
                function=rf.name,
                row=i,
                dataset_row=batch.dataset_row(i),
            )
        pairs: list[tuple[float | None, int]] = []
        last_end = 0
        for step in steps:
            ok = isinstance(step, Sequence) and not isinstance(step, str) and len(step) == 2
            reward, end = step if ok else (None, None)
            if ok and reward is not None:
                ok = isinstance(reward, numbers.Real) and math.isfinite(float(reward))
            if ok:
                ok = isinstance(end, numbers.Integral) and last_end <= int(end)
            if not ok:
                raise RewardError(
                    f"step reward function {rf.name!r}: {where}: step {step!r} is not a "
                    "(finite reward or None, char_end >= the previous step's) pair",
                    function=rf.name,
                    row=i,
                    dataset_row=batch.dataset_row(i),
                )
            last_end = int(end)
            pairs.append((None if reward is None else float(reward), last_end))
        checked.append(pairs)
    return checked
