"""One configured reward function: its callable, name, weight, kwargs, time limit and error
policy, all checked when it is built (before any scoring)."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grpo.rewards.calling import is_async_callable
from grpo.rewards.errors import RewardSpecError
from grpo.rewards.loading import (
    CALL_ARGUMENTS,
    required_columns,
    resolve_reward,
    spec_function_name,
)

__all__ = ["ON_ERROR", "RewardFunction"]

ON_ERROR = ("raise", "skip")
# With on_error="skip", the first few failures of each function are logged; after that they
# are only counted, so a function that always fails does not flood the log.
WARNINGS_PER_FUNCTION = 3


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
        self._warnings_left = WARNINGS_PER_FUNCTION
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

    @property
    def accepted_keywords(self) -> frozenset[str] | None:
        """The keyword arguments the function takes; None when it takes `**kwargs`."""
        return self._accepted

    @property
    def is_async(self) -> bool:
        return self._is_async

    def take_warning(self) -> bool:
        """Whether one more failure may still be logged (then True), or only counted."""
        if self._warnings_left <= 0:
            return False
        self._warnings_left -= 1
        return True

    @property
    def warnings_left(self) -> int:
        return self._warnings_left


def _instantiate(name: str, cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        instance = cls(**kwargs)
    except Exception as exc:
        raise RewardSpecError(
            f"reward function {name!r}: building {cls.__qualname__}(**{kwargs!r}) raised "
            f"{type(exc).__name__}: {exc}",
            hint=f"the kwargs of a class reward are its constructor's parameters "
            f"({_parameters_of(cls)})",
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
