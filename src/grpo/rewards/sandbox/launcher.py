"""Run untrusted Python against tests in a separate, limited process.

The trainer never executes model-written code itself. `run_in_sandbox` starts `_harness.py`
(beside this file) with the trainer's interpreter in a new session, hands it the program and
the tests as JSON, and reads back one verdict per test. What the harness does, and which layer
guards against what, is described in docs/rewards.md ("The code sandbox") and at the top of the
harness file.

Limits (`SandboxLimits`) apply to one program with all of its tests:
wall-clock seconds for all tests together (the CPU-time limit of each test's process follows
it), address-space size, number of processes of the sandbox user, bytes printed on stdout or
stderr, and bytes written to files (each file, and the tmpfs that holds them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ISOLATION_LAYERS",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "TestOutcome",
    "missing_isolation",
    "run_in_sandbox",
]

HARNESS = Path(__file__).with_name("_harness.py")

# Seconds the harness may take beyond the program's own wall limit (start-up, namespace setup,
# cleanup) before the trainer kills it. It never needs this much; the margin only bounds a bug.
_HARNESS_GRACE_S = 10.0

# Isolation layers the harness reports, and what each one protects.
ISOLATION_LAYERS: dict[str, str] = {
    "network": "no network (a network namespace with only a down loopback)",
    "pid": "a PID namespace: the program cannot see or signal other processes, and all of its "
    "processes die with the sandbox",
    "read_only_root": "the file system is read-only",
    "private_tmp": "/tmp, /var/tmp and /dev/shm are private, size-capped tmpfs mounts",
    "user": "the program runs as an unprivileged user, so the process limit holds",
    "limits": "the operating system accepted every resource limit",
}

MODES = ("assert", "io")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program in it): the harness crashed or hung."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program run against all of its tests.

    wall_s: wall-clock seconds for all tests together; each test's process also gets a CPU-time
        limit of the seconds left.
    memory_mb: address-space limit (RLIMIT_AS) of each process, in MiB.
    max_processes: processes (and threads) the sandbox user may have at once, the harness's own
        two included (RLIMIT_NPROC; holds when the trainer runs as root and can switch users).
    max_output_bytes: bytes a test may print on stdout, and separately on stderr, before it is
        killed.
    file_mb: largest file the program may write (RLIMIT_FSIZE), and the size of each private
        tmpfs (its working directory, /tmp, /dev/shm), in MiB.
    """

    wall_s: float = 5.0
    memory_mb: int = 512
    max_processes: int = 16
    max_output_bytes: int = 1 << 20
    file_mb: int = 16

    def __post_init__(self) -> None:
        checks = {
            "wall_s": isinstance(self.wall_s, int | float) and 0 < self.wall_s <= 3600,
            "memory_mb": isinstance(self.memory_mb, int) and self.memory_mb >= 64,
            "max_processes": isinstance(self.max_processes, int) and self.max_processes >= 3,
            "max_output_bytes": isinstance(self.max_output_bytes, int)
            and self.max_output_bytes > 0,
            "file_mb": isinstance(self.file_mb, int) and self.file_mb > 0,
        }
        bad = [
            name for name, ok in checks.items() if not ok or isinstance(getattr(self, name), bool)
        ]
        if bad:
            given = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(
                f"sandbox limits out of range: {given}"
                " (wall_s in (0, 3600], memory_mb >= 64, max_processes >= 3, the others > 0)"
            )


@dataclass(frozen=True)
class TestOutcome:
    """The verdict on one test.

    status: "passed"; "failed" (assertion failed or wrong output); "error" (the program raised
    or exited before the test ran); "timeout" (wall or CPU limit); "output_limit" (printed too
    much); "crashed" (killed by a signal); "not_run" (no time left for it).
    """

    status: str
    detail: str = ""
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxResult:
    outcomes: list[TestOutcome]
    isolation: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def fraction(self) -> float:
        return self.passed / len(self.outcomes) if self.outcomes else 0.0


def missing_isolation(isolation: Mapping[str, Any]) -> list[str]:
    """The layers of ISOLATION_LAYERS that did not hold in a run (empty when all did)."""
    missing = [
        name
        for name in ("network", "pid", "read_only_root", "private_tmp")
        if not isolation.get(name)
    ]
    if not isolation.get("unprivileged"):
        missing.append("user")
    if isolation.get("limits_refused"):
        missing.append("limits")
    return missing


def run_in_sandbox(
    code: str,
    cases: Sequence[Mapping[str, str]],
    *,
    mode: str,
    setup: str = "",
    limits: SandboxLimits | None = None,
    uid: int = 65520,
) -> SandboxResult:
    """Run the Python program `code` against each test in `cases` and return one outcome each.

    mode "assert": each case is `{"test": "<python code>"}`, run after the program (and after
        `setup`, typically the test file's imports) in the program's namespace; it passes when
        it raises nothing.
    mode "io": each case is `{"input": str, "output": str}`; the program runs with the input on
        stdin and passes when its stdout equals the output, line by line with trailing
        whitespace and trailing blank lines ignored.

    Each test runs in a fresh process forked from the harness, so one test cannot change the
    state another sees. `uid` is the user the program runs as when the trainer is root; give
    concurrent runs different uids so that one run's process limit is not shared with another.
    A program that fails in any way gives outcomes, not exceptions; `SandboxError` means the
    sandbox itself did not work.
    """
    if mode not in MODES:
        raise ValueError(f"run_in_sandbox: mode must be one of {MODES}, got {mode!r}")
    limits = limits or SandboxLimits()
    if not cases:
        return SandboxResult(outcomes=[])
    workdir = tempfile.mkdtemp(prefix="grpo-sandbox-")
    try:
        job = {
            "code": code,
            "setup": setup,
            "mode": mode,
            "cases": [dict(c) for c in cases],
            "limits": {
                "wall_s": float(limits.wall_s),
                "memory_mb": limits.memory_mb,
                "max_processes": limits.max_processes,
                "max_output_bytes": limits.max_output_bytes,
                "file_mb": limits.file_mb,
            },
            "uid": uid,
            "gid": uid,
            "workdir": workdir,
        }
        report = _run_harness(json.dumps(job).encode(), workdir, limits.wall_s + _HARNESS_GRACE_S)
    finally:
        # Inside a mount namespace the program wrote to a tmpfs that is already gone; without
        # one, its files are here.
        shutil.rmtree(workdir, ignore_errors=True)
    return _to_result(report, len(cases))


def _run_harness(job: bytes, workdir: str, timeout_s: float) -> dict[str, Any]:
    # A bare environment: nothing of the trainer's (tokens, keys, proxies) reaches the program.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(HARNESS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=env,
        # Its own session: a Ctrl-C meant for the trainer does not reach it, and killing its
        # process group cannot touch the trainer.
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(job, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise SandboxError(
            f"the sandbox harness did not finish within {timeout_s:.0f} s and was killed"
        ) from None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    try:
        report = json.loads(stdout)
    except ValueError:
        tail = stderr.decode("utf-8", "replace")[-2000:]
        raise SandboxError(
            f"the sandbox harness exited with code {proc.returncode} without a report; "
            f"its stderr ends with:\n{tail}"
        ) from None
    return report


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _to_result(report: Mapping[str, Any], n_cases: int) -> SandboxResult:
    by_index = {r["index"]: r for r in report.get("results", []) if isinstance(r, Mapping)}
    fatal = report.get("fatal")
    if fatal and not by_index:
        raise SandboxError(f"the sandbox failed before running any test: {fatal}")
    outcomes = []
    for i in range(n_cases):
        r = by_index.get(i)
        if r is None:
            # The harness stopped the whole run (its backstop deadline) before this test.
            outcomes.append(TestOutcome("timeout", fatal or "no verdict"))
        else:
            outcomes.append(
                TestOutcome(
                    str(r.get("status")), str(r.get("detail", "")), str(r.get("stderr", ""))
                )
            )
    return SandboxResult(
        outcomes=outcomes,
        isolation=dict(report.get("isolation", {})),
        elapsed_s=float(report.get("elapsed_s", 0.0)),
    )
