"""Run several reward functions on a batch and combine their scores into one reward per
completion.

Semantics the trainer relies on:

- `per_function[name][i]` is the raw (unweighted) value function `name` gave completion i, NaN
  where it returned None.
- `total[i]` is the weighted sum of the non-None values for completion i. A function that
  returned None for i contributes nothing (it is not counted as 0 in any mean). When every
  function returned None for i, `total[i]` is NaN: the completion is left out of its group's
  statistics.
- A function with `on_error="skip"` that raises or times out gives None for the completions it
  failed on (all of the batch when it timed out); they are counted in `errors[name]`
  (the metric rewards/{name}/errors). With the default `on_error="raise"` the run stops with a
  `RewardError` naming the function, the completion, its dataset row and prompt
  (see `grpo.rewards.blame`).
- Returning the wrong number of values, or something that is not a number or None, always
  raises: that is a bug in the function, not a hard input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo.rewards.batch import Batch, call_arguments, make_call
from grpo.rewards.blame import as_float, resolve_outcome
from grpo.rewards.calling import call_all
from grpo.rewards.loading import CALL_ARGUMENTS
from grpo.rewards.spec import RewardFunction

__all__ = ["RewardScores", "score_completions"]

logger = logging.getLogger("grpo.rewards")


@dataclass(frozen=True)
class RewardScores:
    """Scores of one batch of B completions.

    total: [B] float32, the weighted sum over functions; NaN where every function returned None.
    per_function: name -> [B] float32 raw values; NaN where that function returned None.
    """

    total: torch.Tensor
    per_function: dict[str, torch.Tensor]
    # name -> completions the function could not score because it raised or timed out
    # (on_error="skip"); every function has an entry.
    errors: dict[str, int] = field(default_factory=dict)
    # name -> numbers the function reported about the batch (its `batch_metrics()`).
    extra: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def scored(self) -> torch.Tensor:
        """[B] bool: True where at least one function scored the completion."""
        return ~torch.isnan(self.total)

    def metrics(self) -> dict[str, float]:
        """Means and population standard deviations (over non-None values), plus the fraction
        of None per function. Keys: reward/mean, reward/std, reward/none_frac (all functions
        None), rewards/{name}/mean, rewards/{name}/std, rewards/{name}/none_frac,
        rewards/{name}/errors (completions left unscored because the function raised or timed
        out), and rewards/{name}/{key} for what a function reports in `batch_metrics()`. A mean
        over no values is NaN."""
        out: dict[str, float] = {}
        out["reward/mean"], out["reward/std"] = _mean_std(self.total)
        out["reward/none_frac"] = _nan_fraction(self.total)
        for name, values in self.per_function.items():
            for key, value in self.extra.get(name, {}).items():
                out[f"rewards/{name}/{key}"] = value
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = _mean_std(values)
            out[f"rewards/{name}/none_frac"] = _nan_fraction(values)
            out[f"rewards/{name}/errors"] = float(self.errors.get(name, 0))
        return out


def score_completions(
    reward_fns: Sequence[RewardFunction],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    row_ids: Sequence[int] | None = None,
) -> RewardScores:
    """Score B completions with every reward function and combine the results.

    prompts, completions: length B, aligned (the prompt repeated for each of its G samples).
    columns: extra dataset columns, each a length-B list aligned with completions; passed to
        every function as keyword arguments.
    row_ids: optional dataset row of each completion, only used to make error messages point
        at the data.

    Each function is called once on the whole batch as
    `fn(prompts=..., completions=..., **columns, **kwargs)`; `async def` functions run
    concurrently. A returned value may be a number (int, float, bool — True counts as 1.0 — or
    a 0-d tensor/array) or None; strings, lists, NaN and infinities are rejected. When a call
    raises, the function is called again on each completion alone to find the one it fails on
    (so a function with side effects sees those completions twice). What happens then, and on a
    timeout, is the function's `on_error` (see the module docstring). Any problem that stops
    the run raises `RewardError` naming the function.
    """
    if not reward_fns:
        raise ValueError("score_completions: no reward functions given; configure at least one")
    names = [rf.name for rf in reward_fns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"score_completions: reward function names must be unique, {duplicates} repeat; "
            "give each a distinct name"
        )
    batch_size = len(completions)
    if len(prompts) != batch_size:
        raise ValueError(
            f"score_completions: {len(prompts)} prompts but {batch_size} completions; "
            "repeat each prompt once per completion"
        )
    columns = dict(columns or {})
    for column, values in columns.items():
        if len(values) != batch_size:
            raise ValueError(
                f"score_completions: column {column!r} has {len(values)} values for "
                f"{batch_size} completions"
            )
        if column in CALL_ARGUMENTS:
            raise ValueError(
                f"score_completions: a dataset column may not be called {column!r}; that "
                "argument name is reserved for the reward call; rename the column"
            )
    if row_ids is not None and len(row_ids) != batch_size:
        raise ValueError(f"score_completions: {len(row_ids)} row_ids for {batch_size} completions")

    batch = Batch(list(prompts), list(completions), columns, row_ids)
    # Check every function's arguments before calling any, so a missing column is reported
    # before minutes of scoring are spent.
    arguments = [call_arguments(rf, batch) for rf in reward_fns]
    outcomes = call_all(
        [make_call(rf, args) for rf, args in zip(reward_fns, arguments, strict=True)]
    )
    per_function: dict[str, torch.Tensor] = {}
    errors: dict[str, int] = {}
    extra: dict[str, dict[str, float]] = {}
    weighted = torch.zeros(batch_size, dtype=torch.float64)
    scored = torch.zeros(batch_size, dtype=torch.bool)
    for rf, outcome in zip(reward_fns, outcomes, strict=True):
        values, errors[rf.name] = resolve_outcome(rf, batch, outcome)
        extra[rf.name] = _batch_metrics(rf)
        raw = torch.tensor(
            [math.nan if v is None else v for v in values], dtype=torch.float64
        ).reshape(batch_size)
        present = ~torch.isnan(raw)
        weighted += torch.where(present, raw * rf.weight, 0.0)
        scored |= present
        per_function[rf.name] = raw.to(torch.float32)
    total = torch.where(scored, weighted, math.nan).to(torch.float32)
    return RewardScores(total=total, per_function=per_function, errors=errors, extra=extra)


def _batch_metrics(rf: RewardFunction) -> dict[str, float]:
    """The function's own numbers about the last batch, when it has a `batch_metrics()`."""
    report = getattr(rf.fn, "batch_metrics", None)
    if not callable(report):
        return {}
    try:
        numbers_ = dict(report())
    except Exception as exc:
        # Metrics are a courtesy: a failure here must not stop training.
        logger.warning(
            "reward function %r: batch_metrics() raised %s: %s", rf.name, type(exc).__name__, exc
        )
        return {}
    return {str(k): float(v) for k, v in numbers_.items() if as_float(v) is not None}


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    present = values[~torch.isnan(values)].double()
    if present.numel() == 0:
        return math.nan, math.nan
    return present.mean().item(), present.std(correction=0).item()


def _nan_fraction(values: torch.Tensor) -> float:
    if values.numel() == 0:
        return math.nan
    return torch.isnan(values).double().mean().item()
