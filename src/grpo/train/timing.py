"""Seconds per phase of a step, through one context manager."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class PhaseTimer:
    """Accumulates ``time/<phase>`` seconds; a phase entered twice in a step (dynamic sampling
    repeats generation and scoring) adds up."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.started = time.perf_counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{phase}"] += time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        return dict(self.seconds)
