"""Call reward functions with a time limit, plain or `async def`, and report what happened.

Mechanics only; what to do with a timeout or an exception is decided in `blame.resolve_outcome`.

- A plain function without a time limit runs in the calling thread, exactly as before.
- A plain function with a time limit runs in a daemon thread that the caller waits for. Python
  cannot kill a thread: on timeout the thread gets an asynchronous exception, which stops pure
  Python code at its next bytecode but not a blocking C call, and is then abandoned. Code that
  may hang in C belongs in its own process (as the code and math rewards do).
- `async def` functions (and callables whose `__call__` is async) run together on one event
  loop in a helper thread, each under `asyncio.timeout`, which cancels them cleanly; that loop
  runs while the plain functions are being called.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Call", "Outcome", "call_all", "is_async_callable"]


class _Abandoned(BaseException):
    """Raised inside a reward thread that ran past its time limit (a BaseException so that a
    broad `except Exception` in the user's code does not swallow it)."""


@dataclass(frozen=True)
class Call:
    """One call to make: `fn(**arguments)`, given at most `timeout_s` seconds (None: no limit)."""

    fn: Callable[..., Any]
    arguments: dict[str, Any]
    timeout_s: float | None
    is_async: bool
    label: str = "reward"


@dataclass(frozen=True)
class Outcome:
    """What a call did: returned `value`, raised `error`, or ran out of time (`timed_out`)."""

    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    seconds: float = 0.0


def is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # An instance whose __call__ is `async def` (a reward class with async scoring).
    method = inspect.getattr_static(type(fn), "__call__", None)
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(method)


def call_all(calls: Sequence[Call]) -> list[Outcome]:
    """Make every call and return their outcomes in order.

    The async calls start first, on their own loop thread, so they overlap with the plain ones,
    which run one after another in this thread (plain reward code need not be thread-safe).
    """
    async_indices = [i for i, c in enumerate(calls) if c.is_async]
    background = _LoopThread([calls[i] for i in async_indices]) if async_indices else None
    outcomes: list[Outcome | None] = [None] * len(calls)
    try:
        for i, c in enumerate(calls):
            if not c.is_async:
                outcomes[i] = _call_plain(c)
    finally:
        if background is not None:
            for i, outcome in zip(async_indices, background.join(), strict=True):
                outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _call_plain(c: Call) -> Outcome:
    start = time.perf_counter()
    if c.timeout_s is None:
        try:
            value = c.fn(**c.arguments)
        except Exception as exc:
            return Outcome(error=exc, seconds=time.perf_counter() - start)
    else:
        outcome = _call_in_thread(c)
        if outcome.error is not None or outcome.timed_out:
            return outcome
        value = outcome.value
    if inspect.isawaitable(value):
        # A plain-looking callable that returned a coroutine (a lambda around an async
        # function, say): finish it on a loop of its own, within what is left of the limit.
        left = None if c.timeout_s is None else max(c.timeout_s - (time.perf_counter() - start), 0)
        awaited = _LoopThread([Call(_returning(value), {}, left, True, c.label)]).join()[0]
        return Outcome(awaited.value, awaited.error, awaited.timed_out, time.perf_counter() - start)
    return Outcome(value=value, seconds=time.perf_counter() - start)


def _returning(awaitable: Any) -> Callable[[], Any]:
    async def wrapper() -> Any:
        return await awaitable

    return wrapper


def _call_in_thread(c: Call) -> Outcome:
    box: list[Outcome] = []
    start = time.perf_counter()

    def target() -> None:
        try:
            box.append(Outcome(value=c.fn(**c.arguments)))
        except _Abandoned:
            pass
        except BaseException as exc:  # SystemExit in a thread would vanish silently otherwise
            box.append(Outcome(error=exc))

    thread = threading.Thread(target=target, name=f"grpo-{c.label}", daemon=True)
    thread.start()
    thread.join(c.timeout_s)
    seconds = time.perf_counter() - start
    if thread.is_alive() or not box:
        _interrupt(thread)
        return Outcome(timed_out=True, seconds=seconds)
    outcome = box[0]
    return Outcome(outcome.value, outcome.error, False, seconds)


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
    )


class _LoopThread:
    """Run async calls concurrently on a fresh event loop in a helper thread.

    A fresh loop in its own thread works whether or not the caller already runs a loop (a
    notebook does), and keeps the plain calls in the calling thread free to run meanwhile.
    """

    def __init__(self, calls: list[Call]) -> None:
        self._calls = calls
        self._outcomes: list[Outcome] = []
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="grpo-reward-async", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._outcomes = asyncio.run(self._gather())
        except BaseException as exc:  # surfaced to the caller in join()
            self._failure = exc

    async def _gather(self) -> list[Outcome]:
        return list(await asyncio.gather(*(_call_async(c) for c in self._calls)))

    def join(self) -> list[Outcome]:
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        return self._outcomes


async def _call_async(c: Call) -> Outcome:
    start = time.perf_counter()
    limit = asyncio.timeout(c.timeout_s)
    try:
        async with limit:
            value = c.fn(**c.arguments)
            if inspect.isawaitable(value):
                value = await value
    except TimeoutError as exc:
        seconds = time.perf_counter() - start
        # Our limit, or a TimeoutError the function raised itself (a failed request, say)?
        if limit.expired():
            return Outcome(timed_out=True, seconds=seconds)
        return Outcome(error=exc, seconds=seconds)
    except Exception as exc:
        return Outcome(error=exc, seconds=time.perf_counter() - start)
    return Outcome(value=value, seconds=time.perf_counter() - start)
