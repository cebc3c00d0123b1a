"""Run several reward functions on a batch and combine their scores into one reward per
completion.

Semantics the trainer relies on:

- `per_function[name][i]` is the raw (unweighted) value function `name` gave completion i, NaN
  where it returned None.
- `total[i]` is the weighted sum of the non-None values for completion i. A function that
  returned None for i contributes nothing (it is not counted as 0 in any mean). When every
  function returned None for i, `total[i]` is NaN: the completion is left out of its group's
  statistics.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo.rewards.errors import RewardError, RewardSpecError
from grpo.rewards.extract import completion_text
from grpo.rewards.loading import (
    CALL_ARGUMENTS,
    required_columns,
    resolve_reward,
    spec_function_name,
)

__all__ = ["RewardFunction", "RewardScores", "score_completions"]

_PROMPT_PREVIEW_CHARS = 200


@dataclass
class RewardFunction:
    """One reward function with its name (used in metrics), weight and fixed keyword arguments.

    `kwargs` are passed to every call next to the dataset columns (for example
    `{"target_chars": 500}` for `reasoning_length`). If `fn` has no `**kwargs` parameter, it is
    given only the arguments it names, so `def f(completions, answer)` works too.
    """

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The keyword names fn accepts; None when it takes **kwargs (everything is passed).
    _accepted: frozenset[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RewardSpecError(f"reward function name must be a non-empty string: {self!r}")
        if not callable(self.fn):
            raise RewardSpecError(f"reward function {self.name!r}: fn is not callable")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real):
            raise RewardSpecError(
                f"reward function {self.name!r}: weight must be a number, got {self.weight!r}"
            )
        if not math.isfinite(self.weight):
            raise RewardSpecError(
                f"reward function {self.name!r}: weight must be finite, got {self.weight!r}"
            )
        self.weight = float(self.weight)
        self.kwargs = dict(self.kwargs)
        self._accepted = _accepted_keywords(self.fn)
        clash = CALL_ARGUMENTS & set(self.kwargs)
        if clash:
            raise RewardSpecError(
                f"reward function {self.name!r}: kwargs may not set {sorted(clash)}; the trainer "
                "passes prompts and completions itself"
            )
        if self._accepted is not None:
            unknown = sorted(set(self.kwargs) - self._accepted)
            if unknown:
                raise RewardSpecError(
                    f"reward function {self.name!r}: kwargs {unknown} are not parameters of "
                    f"{_qualname(self.fn)} (it accepts {sorted(self._accepted)})"
                )

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        weight: float = 1.0,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> RewardFunction:
        """Resolve `spec` (see `resolve_reward`) and wrap it; the name defaults to the built-in
        name or the function name after ':'."""
        fn = resolve_reward(spec)
        return cls(
            name=name or spec_function_name(spec),
            fn=fn,
            weight=weight,
            kwargs=dict(kwargs or {}),
        )

    def required_columns(self) -> set[str]:
        """Dataset columns this function needs that its fixed kwargs do not supply."""
        return required_columns(self.fn) - set(self.kwargs)


@dataclass(frozen=True)
class RewardScores:
    """Scores of one batch of B completions.

    total: [B] float32, the weighted sum over functions; NaN where every function returned None.
    per_function: name -> [B] float32 raw values; NaN where that function returned None.
    """

    total: torch.Tensor
    per_function: dict[str, torch.Tensor]

    @property
    def scored(self) -> torch.Tensor:
        """[B] bool: True where at least one function scored the completion."""
        return ~torch.isnan(self.total)

    def metrics(self) -> dict[str, float]:
        """Means and population standard deviations (over non-None values), plus the fraction
        of None per function. Keys: reward/mean, reward/std, reward/none_frac (all functions
        None), rewards/{name}/mean, rewards/{name}/std, rewards/{name}/none_frac. A mean over no
        values is NaN."""
        out: dict[str, float] = {}
        out["reward/mean"], out["reward/std"] = _mean_std(self.total)
        out["reward/none_frac"] = _nan_fraction(self.total)
        for name, values in self.per_function.items():
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = _mean_std(values)
            out[f"rewards/{name}/none_frac"] = _nan_fraction(values)
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
    `fn(prompts=..., completions=..., **columns, **kwargs)`. A returned value may be a number
    (int, float, bool — True counts as 1.0 — or a 0-d tensor/array) or None; strings, lists,
    NaN and infinities are rejected. Any problem raises `RewardError` naming the function.
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

    batch = _Batch(list(prompts), list(completions), columns, row_ids)
    per_function: dict[str, torch.Tensor] = {}
    weighted = torch.zeros(batch_size, dtype=torch.float64)
    scored = torch.zeros(batch_size, dtype=torch.bool)
    for rf in reward_fns:
        values = _run_one(rf, batch)
        raw = torch.tensor(
            [math.nan if v is None else v for v in values], dtype=torch.float64
        ).reshape(batch_size)
        present = ~torch.isnan(raw)
        weighted += torch.where(present, raw * rf.weight, 0.0)
        scored |= present
        per_function[rf.name] = raw.to(torch.float32)
    total = torch.where(scored, weighted, math.nan).to(torch.float32)
    return RewardScores(total=total, per_function=per_function)


@dataclass
class _Batch:
    prompts: list[Any]
    completions: list[Any]
    columns: dict[str, Sequence[Any]]
    row_ids: Sequence[int] | None

    def describe(self) -> str:
        text = f"a batch of {len(self.completions)} completions"
        if self.row_ids is not None and len(self.row_ids) > 0:
            text += f" (first dataset row {self.row_ids[0]})"
        if self.prompts:
            text += f"; first prompt: {_preview(self.prompts[0])}"
        return text

    def describe_item(self, i: int) -> str:
        text = f"completion {i} of the batch"
        if self.row_ids is not None:
            text += f" (dataset row {self.row_ids[i]})"
        return f"{text}; prompt: {_preview(self.prompts[i])}"


def _run_one(rf: RewardFunction, batch: _Batch) -> list[float | None]:
    """Call one reward function on the whole batch and check what it returns.

    The single place that calls user code, so per-function timeouts and an on_error policy can
    wrap it later.
    """
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
    if rf._accepted is not None:
        arguments = {k: v for k, v in arguments.items() if k in rf._accepted}

    try:
        output = rf.fn(**arguments)
    except Exception as exc:
        raise RewardError(
            f"reward function {rf.name!r} raised {type(exc).__name__}: {exc}\n"
            f"  while scoring {batch.describe()}\n"
            "  (its traceback is above; return None for a completion it cannot score instead "
            "of raising)",
            function=rf.name,
        ) from exc
    return _check_output(rf, output, batch)


def _check_output(rf: RewardFunction, output: Any, batch: _Batch) -> list[float | None]:
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
        number = _as_float(value)
        if number is None:
            raise RewardError(
                f"reward function {rf.name!r} returned {value!r} (a {type(value).__name__}) for "
                f"{batch.describe_item(i)}; rewards must be numbers (int, float or bool) or None",
                function=rf.name,
            )
        if not math.isfinite(number):
            raise RewardError(
                f"reward function {rf.name!r} returned {number} for {batch.describe_item(i)}; "
                "rewards must be finite: return None to mean 'cannot score this completion'",
                function=rf.name,
            )
        values.append(number)
    return values


def _as_float(value: Any) -> float | None:
    # 0-d tensors and numpy scalars (including numpy.bool_) become Python values first.
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _accepted_keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in keyword_kinds)


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _preview(prompt: Any) -> str:
    # For a chat prompt the last message is the question; the system prompt in front of it is
    # the same in every row and tells the reader nothing.
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


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    present = values[~torch.isnan(values)].double()
    if present.numel() == 0:
        return math.nan, math.nan
    return present.mean().item(), present.std(correction=0).item()


def _nan_fraction(values: torch.Tensor) -> float:
    if values.numel() == 0:
        return math.nan
    return torch.isnan(values).double().mean().item()
