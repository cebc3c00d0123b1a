"""Stopping a run on SIGTERM (what Slurm and Kubernetes send before preemption) or Ctrl-C.

The first signal only records that a stop was asked for: the trainer finishes (or, on one
process, aborts at the next safe point) the current step, writes a checkpoint and exits. A
second Ctrl-C exits at once. Imports nothing from the package, so the engines (which can abort
a long generation) and the trainer share it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StepAborted(Exception):
    """Raised at a safe point of a step when a stop was asked for long enough ago that the
    step should not be finished (see ``abort_after_s``)."""


_requested: tuple[int, float] | None = None  # (signal number, time.monotonic())
_abort_after_s: float | None = None


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return None if _requested is None else _requested[0]


def request(signum: int = signal.SIGTERM) -> None:
    """Ask for a stop as the signal ``signum`` would (for tests and embedding code)."""
    global _requested
    if _requested is None:
        _requested = (signum, time.monotonic())


def clear() -> None:
    global _requested
    _requested = None


def checkpoint() -> None:
    """A safe point: raise StepAborted when a stop was asked for more than ``abort_after_s``
    seconds ago (None: never abort, finish the step)."""
    if _requested is None or _abort_after_s is None:
        return
    if time.monotonic() - _requested[1] >= _abort_after_s:
        raise StepAborted(f"stop requested by signal {_requested[0]}")


def _handler(signum: int, frame: FrameType | None) -> None:
    if _requested is not None and signum == signal.SIGINT:
        # a second Ctrl-C: the user does not want to wait for the checkpoint
        os.write(2, b"\ninterrupted again: exiting now, without a checkpoint\n")
        os._exit(130)
    request(signum)
    name = signal.Signals(signum).name
    os.write(2, f"\n{name}: finishing the step, then writing a checkpoint\n".encode())


@contextmanager
def handling_stops(abort_after_s: float | None) -> Iterator[None]:
    """Install the SIGTERM/SIGINT handlers for the duration of a run (main thread only)."""
    global _abort_after_s
    clear()
    _abort_after_s = abort_after_s
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _abort_after_s = None
        sys.stderr.flush()
