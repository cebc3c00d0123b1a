"""Helpers for tests that run real torch.distributed jobs (gloo, 2 processes via torchrun)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What torchrun prints when a rank died of a native signal, not of a Python error: glibc's
# heap checks abort (SIGABRT) and segfaults. On this 2-core CI machine about one 2-rank gloo
# run in 20 has died that way (at exit, or once mid-run with "malloc(): unaligned tcache
# chunk detected"), in runs whose Python side was correct; see _native_crash.
_NATIVE_CRASH_MARKS = ("(SIGABRT)", "(SIGSEGV)", "malloc(): ", "free(): ", "double free")


def _native_crash(proc: subprocess.CompletedProcess) -> bool:
    """True when a failed job's output says a rank died of a native signal (the other rank
    then fails too, with a connection error from gloo)."""
    out = proc.stdout or ""
    return proc.returncode != 0 and any(m in out for m in _NATIVE_CRASH_MARKS)


def torchrun(
    args: list[str],
    *,
    nproc: int = 2,
    timeout: float = 300,
    env: dict | None = None,
    retry_native_crash: bool = False,
):
    """``python -m torch.distributed.run --nproc-per-node N ARGS`` on a free local port;
    returns the CompletedProcess (stdout and stderr merged into stdout).

    ``retry_native_crash``: for jobs that must succeed, run once more when a rank died of a
    native signal (see ``_NATIVE_CRASH_MARKS``), with a warning that carries the first run's
    output, so the crash stays visible in the test report. A job that crashes twice, or
    fails any other way, is returned as it is and fails its test."""
    proc = _torchrun_once(args, nproc=nproc, timeout=timeout, env=env)
    if retry_native_crash and _native_crash(proc):
        warnings.warn(
            f"torchrun {' '.join(args[:3])}: a rank died of a native signal; running once "
            f"more. First run's output (tail):\n{proc.stdout[-2000:]}",
            stacklevel=2,
        )
        # the dead run may have left a checkpoint there (a SIGTERMed rank writes one), and a
        # run resumes from its output directory: start the second run from nothing
        for arg in args:
            if arg.startswith("train.output_dir="):
                shutil.rmtree(arg.split("=", 1)[1], ignore_errors=True)
        proc = _torchrun_once(args, nproc=nproc, timeout=timeout, env=env)
    return proc


def _torchrun_once(args: list[str], *, nproc: int, timeout: float, env: dict | None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def grpo(args: list[str], *, timeout: float = 300, env: dict | None = None):
    """``python -m grpo ARGS`` as one process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "grpo", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_torchrun():
    return torchrun
