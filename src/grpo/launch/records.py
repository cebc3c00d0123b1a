"""Per-rank files in the launch log directory: ``rank{R}.log`` and the exit record ``rank{R}.json``.

A rank writes its record when it starts (``exit_code`` null) and again when it ends. Launchers
read them to tell which rank failed first and where its log is; a rank that has a record but
never ended was killed (SIGKILL, a lost node) or left through ``os._exit`` (the trainer's
failure watchdog) before it could write the second one. Files of an earlier launch are kept
as ``rank{R}.log.1``, ``.2``, ... (``rotate``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RankRecord:
    rank: int
    local_rank: int
    node_rank: int
    host: str
    pid: int
    log: str
    started: float
    ended: float | None = None
    exit_code: int | None = None


def log_path(log_dir: str | Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.log"


def record_path(log_dir: str | Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.json"


def write_record(log_dir: str | Path, record: RankRecord) -> None:
    """Atomic (write, then rename), so a reader never sees half a record."""
    path = record_path(log_dir, record.rank)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(dataclasses.asdict(record)), encoding="utf-8")
    os.replace(tmp, path)


def read_records(log_dir: str | Path, since: float = 0.0) -> dict[int, RankRecord]:
    """Records of ranks started at or after ``since`` (older ones belong to an earlier launch)."""
    out: dict[int, RankRecord] = {}
    d = Path(log_dir)
    if not d.is_dir():
        return out
    for path in d.glob("rank*.json"):
        try:
            record = RankRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # being replaced right now, or not ours
        if record.started >= since:
            out[record.rank] = record
    return out


# The trainer's exit codes after it stopped on SIGINT / SIGTERM and wrote a checkpoint: a
# stop asked for (Ctrl-C, Slurm before the time limit, the launcher), not a failure.
STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def first_failure(records: dict[int, RankRecord]) -> RankRecord | None:
    """The rank that failed first (a non-zero exit that is not a stop): the cause; the ranks
    that ended later were stopped because of it."""
    failed = [
        r
        for r in records.values()
        if r.ended is not None and r.exit_code not in (0, None, *STOP_CODES)
    ]
    return min(failed, key=lambda r: (r.ended, r.rank)) if failed else None


def stopped(records: dict[int, RankRecord]) -> list[int]:
    """Ranks that stopped on a signal after saving (exit 130 or 143)."""
    return sorted(r.rank for r in records.values() if r.exit_code in STOP_CODES)


def rotate(log_dir: str | Path, rank: int, keep: int = 3) -> None:
    """Keep an earlier launch's log and record of this rank as ``rank{R}.log.1`` (.2, ...: older;
    ``keep`` of them), so the files we stream are this launch's and a resubmitted job does not
    erase why the last one stopped. Each launcher rotates only the ranks it starts."""
    for path in (log_path(log_dir, rank), record_path(log_dir, rank)):
        if not path.exists():
            continue
        path.with_name(f"{path.name}.{keep}").unlink(missing_ok=True)
        for i in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))


def tail(path: str | Path, lines: int = 20) -> str:
    """The last lines of a log (read from the end: logs of long runs are large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
