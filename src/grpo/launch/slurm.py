"""``grpo launch slurm``: an sbatch script (srun + torchrun), submitted and followed.

The script runs one torchrun per node through ``srun --kill-on-bad-exit=1`` with a c10d
rendezvous on the allocation's first node, so one failed node ends the whole step;
``--signal=TERM@N`` has Slurm send SIGTERM N seconds before the time limit, which the trainer
answers by saving a checkpoint. The launcher submits it with sbatch, streams rank 0's log (the
log directory must be on a filesystem the nodes share, as on every Slurm cluster), and returns
the job's exit code.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
)
from grpo.launch.records import STOP_CODES, tail

POLL_S = 1.0
LOST_S = 60.0  # a job neither scontrol nor sacct knows for this long is lost to us
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}


def check(job: Job) -> None:
    lc = job.launch
    if lc.stop_grace_s >= lc.signal_before_s:
        raise ConfigError(
            f"key 'launch.stop_grace_s': {lc.stop_grace_s} s to save after SIGTERM does not fit "
            f"in the launch.signal_before_s={lc.signal_before_s} s between Slurm's SIGTERM and "
            "the time limit; raise signal_before_s or lower stop_grace_s"
        )


def script(job: Job) -> str:
    """The sbatch script of this job (what ``launch.dry_run=true`` prints)."""
    check(job)
    lc = job.launch
    q = shlex.quote
    cpus = max(1, lc.cpus_per_rank) * lc.nproc_per_node
    opts = [
        f"--job-name={lc.job_name}",
        f"--nodes={lc.nnodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus}",
    ]
    if lc.gpus_per_node:
        opts.append(f"--gpus-per-node={lc.gpus_per_node}")
    for key in ("partition", "account", "time"):
        if getattr(lc, key):
            opts.append(f"--{key}={getattr(lc, key)}")
    opts += [
        f"--signal=TERM@{lc.signal_before_s}",
        f"--output={job.log_dir}/slurm-%j.out",
        f"--chdir={job.cwd}",
        *lc.sbatch_lines,
    ]
    srun = [
        "srun",
        "--kill-on-bad-exit=1",
        f"--nodes={lc.nnodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus}",  # srun does not inherit it from sbatch (Slurm >= 22.05)
    ]
    python = sys.executable
    if lc.container_image:
        mounts = lc.container_mounts or ",".join(
            sorted({f"{p}:{p}" for p in (str(job.cwd), str(job.run_dir), str(job.log_dir))})
        )
        srun += [
            f"--container-image={lc.container_image}",
            f"--container-mounts={mounts}",
            f"--container-workdir={job.cwd}",
        ]
        python = "python"  # the image's own, with grpo installed in it
    port = str(lc.master_port) if lc.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    torchrun = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={lc.nnodes}",
        f"--nproc-per-node={lc.nproc_per_node}",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$head_node:$rdzv_port"',
        '--rdzv-id="$SLURM_JOB_ID"',
        "--max-restarts=0",
        f"--shutdown-timeout={lc.stop_grace_s}",
        f"--log-dir={q(str(job.log_dir / 'torchrun'))}/job-$SLURM_JOB_ID",
        "-m",
        "grpo.launch.rank",
        q(str(job.log_dir)),
        "--",
        *(q(a) for a in job.payload),
    ]
    lines = [
        "#!/bin/bash",
        f"# written by `grpo launch slurm`: {lc.nnodes} node(s) x {lc.nproc_per_node} rank(s)",
        *(f"#SBATCH {o}" for o in opts),
        "",
        "set -euo pipefail",
        "# the c10d rendezvous lives on the first node (where this script runs)",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"rdzv_port={port}",
        "export PYTHONUNBUFFERED=1",
        'echo "grpo: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, rendezvous $head_node:$rdzv_port"',
        " ".join(srun) + " \\",
        "    " + " \\\n    ".join(_wrap(torchrun)),
        "",
    ]
    return "\n".join(lines)


def _wrap(words: list[str]) -> list[str]:
    """Shell words in lines of about 88 characters (the script is meant to be read)."""
    units: list[str] = []
    for w in words:  # an option and its value stay on one line: "-m grpo.launch.rank"
        if units and units[-1] in ("-m", "--config"):
            units[-1] += " " + w
        else:
            units.append(w)
    out, line = [], ""
    for w in units:
        if line and len(line) + 1 + len(w) > 88:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        out.append(line)
    return out


def _slurm(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def job_state(job_id: str) -> tuple[str, int | None]:
    """(state, exit code) from scontrol, or from sacct once scontrol has forgotten the job."""
    r = _slurm("scontrol", "show", "job", "-o", job_id)
    if r.returncode == 0 and "JobState=" in r.stdout:
        state = re.search(r"JobState=(\S+)", r.stdout).group(1)  # type: ignore[union-attr]
        m = re.search(r"ExitCode=(\d+):(\d+)", r.stdout)
        return state, _exit_code(m.group(1), m.group(2)) if m else None
    r = _slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode")
    if r.returncode == 0 and r.stdout.strip():
        state, _, code = r.stdout.strip().splitlines()[0].partition("|")
        a, _, b = code.partition(":")
        return state.split()[0], _exit_code(a or "0", b or "0")
    return "UNKNOWN", None


def _exit_code(code: str, sig: str) -> int:
    """Slurm's ExitCode=code:signal as a shell would report it."""
    return int(code) if int(code) else (128 + int(sig) if int(sig) else 0)


def run(job: Job) -> int:
    text = script(job)
    if job.launch.dry_run:
        print(text, end="")
        return 0
    if shutil.which("sbatch") is None:
        say(
            "sbatch not found: run this on a Slurm login node (on one machine, "
            "`sudo bash scripts/local_slurm.sh` starts a one-node Slurm cluster)"
        )
        return 2
    job.log_dir.mkdir(parents=True, exist_ok=True)
    clear_rank_files(job, range(job.world_size))
    path = job.log_dir / "job.sbatch"
    path.write_text(text, encoding="utf-8")
    r = _slurm("sbatch", "--parsable", str(path))
    if r.returncode != 0:
        say(f"sbatch refused {path}: {r.stderr.strip() or r.stdout.strip()}")
        return r.returncode or 1
    job_id = r.stdout.strip().split(";")[0]
    out_file = job.log_dir / f"slurm-{job_id}.out"
    say(f"submitted job {job_id} (script {path}); logs in {job.log_dir}")
    if not job.launch.wait:
        say(f"follow it with: squeue -j {job_id}; tail -f {first_log(job)}")
        return 0
    return follow(job, job_id, out_file)


def follow(job: Job, job_id: str, out_file: Path) -> int:
    follower = LogFollower(first_log(job))
    grace = job.launch.stop_grace_s
    failed_at: float | None = None
    cancelled = interrupted = False
    state, code = "PENDING", None
    shown_state = ""
    unknown_since: float | None = None
    while True:
        try:
            follower.pump()
            state, code = job_state(job_id)
            if state == "UNKNOWN":
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > LOST_S:
                    say(f"neither scontrol nor sacct knows job {job_id} any more; stop following")
                    break
                time.sleep(POLL_S)
                continue
            unknown_since = None
            if state != shown_state and state not in ("RUNNING", "COMPLETING"):
                say(f"job {job_id}: {state}")
            shown_state = state
            if state in TERMINAL:
                break
            fail = first_failure(job_records(job))
            if fail is not None and failed_at is None:
                failed_at = time.monotonic()
            if failed_at and not cancelled and time.monotonic() - failed_at > grace + 10:
                # srun ends the step once a node's torchrun exits; if a rank of another node
                # hangs past its grace, cancel the job rather than wait for the time limit
                say(f"rank {fail.rank if fail else '?'} failed; cancelling job {job_id}")
                _slurm("scancel", job_id)
                cancelled = True
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: stop following, the job is cancelled
                break
            interrupted = True
            say(f"interrupted: cancelling job {job_id} (Ctrl-C again stops following)")
            _slurm("scancel", job_id)
    follower.pump()
    if interrupted:
        report(job, job_records(job), 130)
        return 130
    records = job_records(job)
    result = report(job, records, code if code is not None else 1)
    if result != 0 and all(
        r in records and records[r].exit_code in (0, *STOP_CODES) for r in range(job.world_size)
    ):
        say(
            "every rank exited 0 or stopped: the job was signalled (Slurm's SIGTERM "
            f"{job.launch.signal_before_s} s before the time limit, or scancel) and the ranks "
            "stopped in time; torchrun ends with an error after a signal"
        )
    elif result != 0 and first_failure(records) is None:
        say(f"job {job_id} ended {state}; its own output ({out_file}):")
        print(tail(out_file, 30), file=sys.stderr, flush=True)
    return result
