"""The 2-rank tests' retry rule: only a rank's native crash is run again, never a Python error."""

from __future__ import annotations

import subprocess

from .conftest import _native_crash


def _proc(code: int, out: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["torchrun"], code, stdout=out)


def test_a_rank_killed_by_sigabrt_is_a_native_crash():
    out = (
        "malloc(): unaligned tcache chunk detected\n"
        "error: RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset\n"
        "  exitcode  : -6 (pid: 6944)  (SIGABRT)\n"
    )
    assert _native_crash(_proc(1, out))


def test_a_python_error_in_a_rank_is_not_retried():
    out = (
        "error: ValueError: train.batch_size=6 is not a multiple of algorithm.group_size=4\n"
        "  exitcode  : 1 (pid: 6945)\n"
    )
    assert not _native_crash(_proc(1, out))


def test_a_successful_job_is_never_a_crash():
    assert not _native_crash(_proc(0, "held-out accuracy: 6.2% -> 9.4%\n(SIGABRT) in a sample"))
