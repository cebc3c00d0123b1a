"""``grpo launch local``: torch.distributed's own elastic launcher (torchrun) on this machine.

One machine: ``torchrun --standalone`` (or a static rendezvous on launch.master_port). Several:
start ``grpo launch local`` on each with its launch.node_rank and the same master_addr/port
(static rendezvous on node 0). torchrun stops the other ranks of its machine when one fails; a
rank that fails on another machine is seen here through its exit record in the shared log
directory, and this machine's ranks are stopped too, rather than waiting in a collective.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from grpo.config import ConfigError
from grpo.launch.common import (
    Job,
    LogFollower,
    clear_rank_files,
    first_failure,
    first_log,
    job_records,
    report,
    say,
    shell_join,
)

POLL_S = 0.25


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check(job: Job) -> None:
    lc = job.launch
    if lc.nnodes > 1 and lc.master_port == 0:
        raise ConfigError(
            "key 'launch.master_port': with launch.nnodes > 1 every node must be given the same "
            "rendezvous port on node 0, e.g. launch.master_port=29500"
        )


def torchrun_argv(job: Job) -> list[str]:
    lc = job.launch
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={lc.nnodes}",
        f"--nproc-per-node={lc.nproc_per_node}",
    ]
    if lc.nnodes == 1 and lc.master_port == 0:
        argv.append("--standalone")  # a c10d store on a free port of this machine
    else:
        argv += [
            "--rdzv-backend=static",
            f"--master-addr={lc.master_addr}",
            f"--master-port={lc.master_port}",
            f"--node-rank={lc.node_rank}",
        ]
    argv += [
        "--max-restarts=0",
        f"--shutdown-timeout={lc.stop_grace_s}",
        f"--log-dir={job.log_dir / 'torchrun' / f'node{lc.node_rank}'}",
        "-m",
        *job.rank_argv()[2:],  # torchrun runs `python -m grpo.launch.rank ...` itself
    ]
    return argv


def local_ranks(job: Job) -> range:
    lc = job.launch
    first = lc.node_rank * lc.nproc_per_node
    return range(first, first + lc.nproc_per_node)


def kill_stragglers(records, ranks: range) -> None:
    """SIGKILL this machine's ranks that are still running (each leads its own process group:
    torchrun starts workers in new sessions), e.g. a trainer blocked in a collective."""
    host = socket.gethostname()
    for r in ranks:
        rec = records.get(r)
        if rec is not None and rec.ended is None and rec.host == host:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rec.pid, signal.SIGKILL)
                say(f"rank {r} did not stop within launch.stop_grace_s; killed it")


def run(job: Job) -> int:
    check(job)
    argv = torchrun_argv(job)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if job.launch.dry_run:
        print(f"cd {job.cwd}\nPYTHONUNBUFFERED=1 {shell_join(argv)}")
        return 0
    ranks = local_ranks(job)
    grace = job.launch.stop_grace_s
    job.log_dir.mkdir(parents=True, exist_ok=True)
    clear_rank_files(job, ranks)
    if not job.launch.wait:
        out = open(job.log_dir / f"torchrun-node{job.launch.node_rank}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            argv, env=env, cwd=job.cwd, stdout=out, stderr=out, start_new_session=True
        )
        say(f"started torchrun (pid {proc.pid}) for ranks {list(ranks)}; logs in {job.log_dir}")
        return 0

    say(
        f"torchrun: {job.launch.nnodes} node(s) x {job.launch.nproc_per_node} process(es), "
        f"this is node {job.launch.node_rank}; logs in {job.log_dir}"
    )
    # torchrun in its own session: a Ctrl-C reaches it once, through us, not twice
    proc = subprocess.Popen(argv, env=env, cwd=job.cwd, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, _frame):
        forwarded.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {}
    if threading.current_thread() is threading.main_thread():  # else Python refuses handlers
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    follower = LogFollower(first_log(job, ranks[0]))
    failed_at: float | None = None  # when we first saw a failed rank
    killed = False
    try:
        while proc.poll() is None:
            follower.pump()
            records = job_records(job)
            fail = first_failure(records)
            if fail is not None and failed_at is None:
                failed_at = time.monotonic()
                if fail.rank not in ranks:
                    say(
                        f"rank {fail.rank} failed on {fail.host}; stopping this node's ranks "
                        f"{list(ranks)}"
                    )
                    proc.send_signal(signal.SIGTERM)  # torchrun: SIGTERM, then after
                    # --shutdown-timeout a SIGKILL
            elif failed_at and not killed and time.monotonic() - failed_at > grace + 2:
                # torchrun's own wait after a failed rank is a fixed 30 s; keep ours
                kill_stragglers(records, ranks)
                killed = True
            time.sleep(POLL_S)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    follower.pump()
    code = proc.returncode
    if code < 0:  # torchrun itself killed by a signal
        code = 128 - code
    if forwarded and code == 0:
        code = 128 + forwarded[0]
    return report(job, job_records(job), code, ranks=ranks)
