"""The run directory: whether it already holds a run, what to resume, and the lock that keeps
two live runs out of one directory. Rank 0 alone decides and writes; the others are told."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from grpo.errors import RunDirError
from grpo.train.checkpoint import CheckpointManager, checkpoint_problem, read_manifest
from grpo.train.distributed import SINGLE

LOCK = ".lock"
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "summary.json", "curves.png", "config.yaml")


def resolve(pattern: str) -> Path:
    return Path(pattern.replace("{timestamp}", datetime.now().strftime("%Y%m%d-%H%M%S")))


def steps_logged(path: Path) -> int:
    """The last training step in ``metrics.jsonl`` (0 when none: at most the evaluation before
    training was written)."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    last = 0
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            last = max(last, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
    return last


@dataclass
class Decision:
    run_dir: Path
    resume_from: Path | None  # the checkpoint to load, None for a fresh start


def decide(path: Path, resume: str, keep_last: int) -> Decision:
    """What this run does with ``train.output_dir`` given ``train.resume``.

    - a directory that holds no run (missing, empty, or a run that failed before its first
      step) is used as it is: fresh start;
    - ``auto``: the newest complete checkpoint, or a fresh start when there is none;
    - ``never``: a fresh start; a previous run's files are moved into ``superseded-<time>/``;
    - a checkpoint path: that checkpoint;
    - unset, with a run there: an error naming both ways out.
    """
    manager = CheckpointManager(path, world=SINGLE, keep_last=keep_last)
    if resume not in ("", "auto", "never"):
        ckpt = Path(resume)
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            raise RunDirError(f"train.resume: {ckpt} is not a complete checkpoint: {problem}")
        return Decision(path, ckpt)
    latest = manager.latest()
    logged = steps_logged(path)
    holds_run = latest is not None or logged > 0 or (path / "summary.json").is_file()
    if resume == "auto":
        if latest is None and holds_run:
            _move_aside(path)  # nothing to resume from: start over, keeping the old files
        return Decision(path, latest)
    if holds_run and resume == "never":
        _move_aside(path)
    elif holds_run:
        where = "no checkpoint"
        if latest is not None:
            where = f"a checkpoint at step {read_manifest(latest)['step']}"
        raise RunDirError(
            f"train.output_dir: {path} already holds a run ({logged} steps logged, {where}). "
            "Continue it with train.resume=auto, or start over with train.resume=never (the "
            "old files are moved aside), or choose another train.output_dir."
        )
    else:
        _clear_leftovers(path)
    return Decision(path, None)


def _move_aside(path: Path) -> None:
    """Move a previous run's files (logs, checkpoints, final model) into a new subdirectory."""
    aside = path / f"superseded-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for name in (*RUN_FILES, "checkpoints", "final"):
        if (path / name).exists():
            os.rename(path / name, aside / name)


def _clear_leftovers(path: Path) -> None:
    """A run that failed before its first step left at most its set-up and step-0 lines."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)


def truncate_logs(path: Path, step: int) -> None:
    """Cut metrics.jsonl and samples.jsonl to the lines of steps <= ``step``, so a resumed run
    continues them with no duplicated and no missing step (a line cut short goes too)."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        f = path / name
        if not f.is_file():
            continue
        kept = []
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            s = int(record.get("step", 0))
            # the step's own line has the loss; a line of step == ``step`` without one is the
            # evaluation after training, which the resumed run writes again at its end
            if s < step or (s == step and ("loss" in record or name == "samples.jsonl")):
                kept.append(line)
        tmp = f.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        os.replace(tmp, f)


# ---- the lock ---------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/pid/stat), which tells a live
    process from a new one that reuses a dead one's pid; None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _process_start(pid) in (None, start)


class RunLock:
    """``<run_dir>/.lock`` holding the pid, host and start of the live run. A lock left by a
    process that is gone (killed with -9) is taken over; a live one refuses the new run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirError(f"train.output_dir: could not take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        host, pid = owner.get("host"), owner.get("pid")
        mine = host == socket.gethostname() and isinstance(pid, int)
        if mine and not _alive(pid, owner.get("start")):
            self.path.unlink(missing_ok=True)  # its process is gone: a stale lock
            return
        if not owner:  # an empty or torn lock file (the writer died while writing)
            self.path.unlink(missing_ok=True)
            return
        raise RunDirError(
            f"train.output_dir: {self.path.parent} is in use by a live run (pid {pid} on "
            f"{host}, since {owner.get('since')}); wait for it, stop it, or choose another "
            f"train.output_dir (if that process is gone, delete {self.path})"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
