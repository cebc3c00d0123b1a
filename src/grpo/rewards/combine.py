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
  `RewardError` naming the function, the completion, its dataset row and prompt, with the
  function's traceback above it.
- Returning the wrong number of values, or something that is not a number or None, always
  raises: that is a bug in the function, not a hard input.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo.rewards.calling import Call, Outcome, call_all, is_async_callable
from grpo.rewards.errors import RewardError, RewardSpecError
from grpo.rewards.extract import completion_text
from grpo.rewards.loading import (
    CALL_ARGUMENTS,
    required_columns,
    resolve_reward,
    spec_function_name,
)

__all__ = ["ON_ERROR", "RewardFunction", "RewardScores", "score_completions"]

logger = logging.getLogger("grpo.rewards")

_PROMPT_PREVIEW_CHARS = 200
ON_ERROR = ("raise", "skip")
# With on_error="skip", the first few failures of each function are logged with their
# traceback; after that they are only counted, so a function that always fails does not flood
# the log.
_WARNINGS_PER_FUNCTION = 3


@dataclass
class RewardFunction:
    """One reward function with its name (used in metrics), weight and fixed keyword arguments.

    `kwargs` are passed to every call next to the dataset columns (for example
    `{"target_chars": 500}` for `reasoning_length`). If `fn` has no `**kwargs` parameter, it is
    given only the arguments it names, so `def f(completions, answer)` works too.

    When `fn` is a class (a reward with state to load once, such as `RewardModel`), it is
    built here as `fn(**kwargs)` and the instance becomes the function; kwargs then configure
    the instance and are not passed to each call.

    timeout_s: seconds one call (on the whole batch) may take; None waits for ever. See
        `grpo.rewards.calling` for what a timeout can and cannot stop.
    on_error: "raise" (default) stops the run when the function raises or times out; "skip"
        gives None for the completions it failed on and counts them in rewards/{name}/errors.
    `async def` functions run concurrently with each other and with the plain ones.
    """

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    on_error: str = "raise"
    # The keyword names fn accepts; None when it takes **kwargs (everything is passed).
    _accepted: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _is_async: bool = field(init=False, repr=False, compare=False)
    _warnings_left: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RewardSpecError(f"reward function name must be a non-empty string: {self!r}")
        if not callable(self.fn):
            raise RewardSpecError(f"reward function {self.name!r}: fn is not callable")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, numbers.Real)
            or not 0 < self.timeout_s < math.inf
        ):
            raise RewardSpecError(
                f"reward function {self.name!r}: timeout_s must be a positive number of seconds "
                f"or None, got {self.timeout_s!r}"
            )
        if self.on_error not in ON_ERROR:
            raise RewardSpecError(
                f"reward function {self.name!r}: on_error must be one of {ON_ERROR}, got "
                f"{self.on_error!r}"
            )
        self.timeout_s = None if self.timeout_s is None else float(self.timeout_s)
        self._warnings_left = _WARNINGS_PER_FUNCTION
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
        if inspect.isclass(self.fn):
            self.fn = _instantiate(self.name, self.fn, self.kwargs)
            self.kwargs = {}
        self._accepted = _accepted_keywords(self.fn)
        self._is_async = is_async_callable(self.fn)
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
        timeout_s: float | None = None,
        on_error: str = "raise",
    ) -> RewardFunction:
        """Resolve `spec` (see `resolve_reward`) and wrap it; the name defaults to the built-in
        name or the function name after ':'. A spec naming a class is built with `kwargs`."""
        fn = resolve_reward(spec)
        return cls(
            name=name or spec_function_name(spec),
            fn=fn,
            weight=weight,
            kwargs=dict(kwargs or {}),
            timeout_s=timeout_s,
            on_error=on_error,
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

    batch = _Batch(list(prompts), list(completions), columns, row_ids)
    # Check every function's arguments before calling any, so a missing column is reported
    # before minutes of scoring are spent.
    arguments = [_arguments(rf, batch) for rf in reward_fns]
    outcomes = call_all([_call(rf, args) for rf, args in zip(reward_fns, arguments, strict=True)])
    per_function: dict[str, torch.Tensor] = {}
    errors: dict[str, int] = {}
    extra: dict[str, dict[str, float]] = {}
    weighted = torch.zeros(batch_size, dtype=torch.float64)
    scored = torch.zeros(batch_size, dtype=torch.bool)
    for rf, outcome in zip(reward_fns, outcomes, strict=True):
        values, errors[rf.name] = _run_one(rf, batch, outcome)
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

    def dataset_row(self, i: int) -> int | None:
        return None if self.row_ids is None else int(self.row_ids[i])

    def row(self, i: int) -> _Batch:
        """The batch of completion i alone."""
        return _Batch(
            self.prompts[i : i + 1],
            self.completions[i : i + 1],
            {k: list(v[i : i + 1]) for k, v in self.columns.items()},
            None if self.row_ids is None else self.row_ids[i : i + 1],
        )


def _arguments(rf: RewardFunction, batch: _Batch) -> dict[str, Any]:
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
    if rf._accepted is not None:
        arguments = {k: v for k, v in arguments.items() if k in rf._accepted}
    return arguments


def _call(rf: RewardFunction, arguments: dict[str, Any]) -> Call:
    return Call(rf.fn, arguments, rf.timeout_s, rf._is_async, label=f"reward-{rf.name}")


def _run_one(rf: RewardFunction, batch: _Batch, outcome: Outcome) -> tuple[list[float | None], int]:
    """Turn the outcome of `rf`'s call on the whole batch into one value per completion, and
    the number of completions it failed on (on_error="skip").

    The single place that decides about user code: it checks what the function returned,
    and on an exception calls it again on each completion alone to find the one to blame.
    """
    if outcome.timed_out:
        message = (
            f"reward function {rf.name!r} did not return within timeout_s={rf.timeout_s:g} s "
            f"while scoring {batch.describe()}"
        )
        if rf.on_error == "raise":
            raise RewardError(
                message + "\n  (raise timeout_s, make the function faster, or set "
                "on_error: skip to give the batch None and keep training)",
                function=rf.name,
            )
        _warn(rf, message + "; its completions get None", None)
        return [None] * len(batch.completions), len(batch.completions)
    if outcome.error is None:
        return _check_output(rf, outcome.value, batch), 0

    # It raised on the batch: find the completions it raises on alone.
    rows = [batch.row(i) for i in range(len(batch.completions))]
    per_row = _call_rows(rf, rows, stop_at_first_failure=rf.on_error == "raise")
    failures = [i for i, o in enumerate(per_row) if o.error is not None or o.timed_out]
    if rf.on_error == "raise":
        if failures:
            i = failures[0]
            row_outcome = per_row[i]
            what = (
                f"raised {_exception_text(row_outcome.error)}"
                if row_outcome.error is not None
                else f"did not return within timeout_s={rf.timeout_s:g} s"
            )
            cause = row_outcome.error or outcome.error
            text = f"on {batch.describe_item(i)}"
            row, dataset_row = i, batch.dataset_row(i)
        else:
            what = f"raised {_exception_text(outcome.error)}"
            cause = outcome.error
            text = "on the batch, though on each completion alone it does not"
            row = dataset_row = None
        raise RewardError(
            f"reward function {rf.name!r} {what}\n  {text}\n  while scoring "
            f"{batch.describe()}\n  (its traceback is above; return None for a completion it "
            "cannot score instead of raising, or set on_error: skip for this reward to give "
            "the completions it fails on None and keep training)",
            function=rf.name,
            row=row,
            dataset_row=dataset_row,
        ) from cause
    values: list[float | None] = []
    for i, row_outcome in enumerate(per_row):
        if i in failures:
            what = (
                f"raised {_exception_text(row_outcome.error)}"
                if row_outcome.error is not None
                else "timed out"
            )
            _warn(rf, f"reward function {rf.name!r} {what} on {batch.describe_item(i)}; it "
                  "gets None", row_outcome.error)  # fmt: skip
            values.append(None)
        else:
            values.extend(_check_output(rf, row_outcome.value, rows[i]))
    return values, len(failures)


def _call_rows(
    rf: RewardFunction, rows: list[_Batch], *, stop_at_first_failure: bool
) -> list[Outcome]:
    calls = [_call(rf, _arguments(rf, row)) for row in rows]
    if rf._is_async or not stop_at_first_failure:
        # Async calls are concurrent, so there is nothing to save by stopping early.
        return call_all(calls)
    outcomes: list[Outcome] = []
    for c in calls:
        outcomes.extend(call_all([c]))
        if outcomes[-1].error is not None or outcomes[-1].timed_out:
            break
    return outcomes


def _warn(rf: RewardFunction, message: str, error: BaseException | None) -> None:
    if rf._warnings_left <= 0:
        return
    rf._warnings_left -= 1
    if rf._warnings_left == 0:
        message += (
            f". Further failures of {rf.name!r} are only counted, in rewards/{rf.name}/errors"
        )
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    logger.warning(message, exc_info=exc_info)


def _exception_text(error: BaseException | None) -> str:
    return "nothing" if error is None else f"{type(error).__name__}: {error}"


def _batch_metrics(rf: RewardFunction) -> dict[str, float]:
    """The function's own numbers about the last batch, when it has a `batch_metrics()`."""
    report = getattr(rf.fn, "batch_metrics", None)
    if not callable(report):
        return {}
    try:
        numbers_ = dict(report())
    except Exception:
        # Metrics are a courtesy: a failure here must not stop training.
        logger.warning("reward function %r: batch_metrics() raised", rf.name, exc_info=True)
        return {}
    return {str(k): float(v) for k, v in numbers_.items() if _as_float(v) is not None}


def _instantiate(name: str, cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        instance = cls(**kwargs)
    except Exception as exc:
        raise RewardSpecError(
            f"reward function {name!r}: building {cls.__qualname__}(**{kwargs!r}) raised "
            f"{type(exc).__name__}: {exc}; the kwargs of a class reward are its constructor's "
            f"parameters ({_parameters_of(cls)})"
        ) from exc
    if not callable(instance):
        raise RewardSpecError(
            f"reward function {name!r}: {cls.__qualname__} instances are not callable; give "
            "the class a __call__(self, prompts, completions, **columns) method"
        )
    return instance


def _parameters_of(cls: type) -> str:
    try:
        parameters = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return "unknown"
    return ", ".join(parameters) or "none"


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
