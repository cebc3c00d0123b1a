"""The `math` reward: is the completion's final answer mathematically equal to the gold answer?

Equality is decided by math-verify (LaTeX and plain expressions to sympy, then numeric and
symbolic comparison): `\\frac{1}{2}`, `0.5` and `50\\%` are equal, as are `\\sqrt{8}` and
`2\\sqrt{2}`, `[1,2)` written either way, and sets in any order. The checking runs in worker
processes (`_math_worker.py`) that are killed when one answer takes longer than `timeout_s`.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grpo.rewards.extract import completion_text

__all__ = ["MathEquivalence"]

_WORKER = Path(__file__).with_name("_math_worker.py")
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine can take a while


class MathEquivalence:
    """Reward function `math`: 1.0 when the final answer equals the gold `answer`, else 0.0.

    Built from config as `{name: math, kwargs: {...}}`; every keyword is optional.

    timeout_s: seconds the check of one completion may take; a check that runs longer scores
        0.0 (its worker is killed and restarted). math-verify's own per-step limit is a third
        of it, at least one second.
    workers: checking processes; default min(4, CPU count). 0 checks in the trainer's process
        instead (no hard time limit: only math-verify's own, and only in the main thread).
    memory_mb: address-space limit of each worker process.

    Needs the dataset column `answer` (a string such as "\\frac{1}{2}" or "[1, 2)", or a
    number). The completion's answer is the last `<answer>...</answer>` when there is one,
    else math-verify's search of the whole completion (`\\boxed{}` first, then the last
    expression). A completion without a readable answer scores 0.0; a gold answer that cannot
    be read gives None (the data is at fault). `batch_metrics()` reports the fraction of the
    last batch without a readable answer and the fraction that ran out of time.
    """

    def __init__(
        self, timeout_s: float = 5.0, workers: int | None = None, memory_mb: int = 4096
    ) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ValueError(f"math: timeout_s must be a positive number, got {timeout_s!r}")
        workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"math: workers must be a non-negative integer, got {workers!r}")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 256:
            raise ValueError(f"math: memory_mb must be an integer >= 256, got {memory_mb!r}")
        self.timeout_s = float(timeout_s)
        self.workers = workers
        self.memory_mb = memory_mb
        self._pool: _WorkerPool | None = None
        self._metrics: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"MathEquivalence(timeout_s={self.timeout_s}, workers={self.workers})"

    def __call__(
        self, prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
    ) -> list[float | None]:
        if len(answer) != len(completions):
            raise ValueError(
                f"math: got {len(completions)} completions but {len(answer)} values in the "
                "'answer' column; they must be aligned one per completion"
            )
        step_timeout = max(1, int(self.timeout_s / 3))
        requests: list[dict[str, Any] | None] = []
        for completion, gold in zip(completions, answer, strict=True):
            gold_text = _gold_text(gold)
            requests.append(
                None
                if gold_text is None
                else {
                    "completion": completion_text(completion),
                    "gold": gold_text,
                    "timeout": step_timeout,
                }
            )
        todo = [r for r in requests if r is not None]
        replies = iter(self._check(todo))
        scores: list[float | None] = []
        unreadable = timeouts = 0
        for request in requests:
            reply = None if request is None else next(replies)
            if request is None:
                scores.append(None)
            elif reply is None:  # ran out of time: the answer is pathological, not correct
                timeouts += 1
                scores.append(0.0)
            elif "error" in reply:
                raise RuntimeError(f"math: checking an answer failed: {reply['error']}")
            elif not reply["gold_ok"]:
                scores.append(None)
            else:
                unreadable += reply["answer"] is None
                scores.append(1.0 if reply["correct"] else 0.0)
        n = len(completions)
        self._metrics = {
            "no_answer_frac": unreadable / n if n else math.nan,
            "timeout_frac": timeouts / n if n else math.nan,
        }
        return scores

    def batch_metrics(self) -> dict[str, float]:
        """Numbers about the last call, logged as rewards/<name>/<key>."""
        return dict(self._metrics)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the trainer exits)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _check(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if not requests:
            return []
        if self.workers == 0:
            return [self._check_here(r) for r in requests]
        if self._pool is None:
            self._pool = _WorkerPool(
                [sys.executable, str(_WORKER), str(self.memory_mb)], self.workers
            )
        return self._pool.map(requests, self.timeout_s)

    @staticmethod
    def _check_here(request: dict[str, Any]) -> dict[str, Any]:
        from grpo.rewards import _math_worker

        # math-verify's time limits use signal.alarm, which only the main thread may set.
        timeout = (
            request["timeout"] if threading.current_thread() is threading.main_thread() else None
        )
        return _math_worker.check(request["completion"], request["gold"], timeout)


def _gold_text(gold: Any) -> str | None:
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int | float):
        return repr(gold) if math.isfinite(gold) else None
    if isinstance(gold, str) and gold.strip():
        return gold
    return None


class _Worker:
    """One long-lived checking process, spoken to in JSON lines."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify logs every parse failure there
            # Its own session: a Ctrl-C meant for the trainer does not reach it mid-answer.
            start_new_session=True,
        )
        self._buffer = b""
        ready = self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S)
        if ready is None:
            self.kill()
            raise RuntimeError(
                f"math: the checking process did not start within {_STARTUP_TIMEOUT_S:.0f} s "
                "(is math-verify installed? pip install 'math-verify>=0.9')"
            )

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The reply, or None when it did not come in time (the process is then killed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            return None
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            self.kill()
            return None
        return json.loads(line)

    def _read_line(self, deadline: float) -> bytes | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the process died (out of memory, say)
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class _WorkerPool:
    """`size` workers, each fed by one thread; a worker that times out is replaced."""

    def __init__(self, command: list[str], size: int) -> None:
        self.command = command
        self.size = size
        self._workers: list[_Worker | None] = [None] * size
        # Workers must not outlive the trainer, even when close() is never called.
        self._finalizer = weakref.finalize(self, _close_workers, self._workers)
        atexit.register(self._finalizer)

    def map(self, requests: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any] | None]:
        replies: list[dict[str, Any] | None] = [None] * len(requests)
        next_index = iter(range(len(requests)))
        lock = threading.Lock()

        def serve(slot: int) -> None:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                worker = self._workers[slot]
                if worker is None or not worker.alive:
                    worker = self._workers[slot] = _Worker(self.command)
                replies[i] = worker.ask(requests[i], timeout_s)

        slots = min(self.size, len(requests))
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="grpo-math") as pool:
            for future in [pool.submit(serve, slot) for slot in range(slots)]:
                future.result()
        return replies

    def close(self) -> None:
        self._finalizer()


def _close_workers(workers: list[_Worker | None]) -> None:
    for i, worker in enumerate(workers):
        if worker is not None:
            worker.kill()
            workers[i] = None
