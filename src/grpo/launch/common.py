"""What every backend shares: the job (what each rank runs, where its logs go), log streaming,
and the report of a failed rank.

The contract with the trainer is small: each rank runs ``python -m grpo train <the same config
and overrides>`` with the torch.distributed environment set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT, or torchrun's rendezvous). Nothing here imports the trainer.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from grpo.config import ConfigError, GRPOConfig, LaunchConfig, load_config
from grpo.launch.records import (
    RankRecord,
    first_failure,
    log_path,
    read_records,
    rotate,
    stopped,
    tail,
)

BACKENDS = ("local", "ray", "slurm")


@dataclass
class Job:
    """One launch: the payload each rank runs, resolved once, before anything starts."""

    backend: str
    cfg: GRPOConfig
    # arguments to `python` on every rank, e.g. ["-m", "grpo", "train", "--config", F, ...]
    payload: list[str]
    run_dir: Path
    log_dir: Path
    cwd: Path
    started: float  # exit records older than this belong to an earlier launch

    @property
    def launch(self) -> LaunchConfig:
        return self.cfg.launch

    @property
    def world_size(self) -> int:
        return self.launch.nnodes * self.launch.nproc_per_node

    def rank_argv(self, python: str = sys.executable) -> list[str]:
        """The command of one rank: the payload, its output into the rank's log."""
        return [python, "-m", "grpo.launch.rank", str(self.log_dir), "--", *self.payload]


def _yaml_str(value: str) -> str:
    """An override value that OmegaConf reads back as exactly this string."""
    return value if re.fullmatch(r"[A-Za-z0-9_./+-]+", value) else json.dumps(value)


def _override_key(item: str) -> str:
    return item.partition("=")[0].strip()


def resolve_run_dir(pattern: str, backend: str, nnodes: int) -> Path:
    """``train.output_dir`` with ``{timestamp}`` filled in once, here, so that every rank
    writes to the same directory (the trainer's own format: YYYYmmdd-HHMMSS)."""
    if "{timestamp}" in pattern:
        if backend == "local" and nnodes > 1:
            raise ConfigError(
                f"key 'train.output_dir': {pattern!r} differs on each node ({{timestamp}} is "
                "filled in when each node starts); with launch.nnodes > 1 give every node the "
                "same directory, e.g. train.output_dir=runs/two-nodes"
            )
        pattern = pattern.replace("{timestamp}", datetime.now().strftime("%Y%m%d-%H%M%S"))
    return Path(pattern).expanduser().absolute()


def make_job(
    backend: str,
    config_path: str | None,
    overrides: list[str],
    payload: list[str] | None = None,
) -> Job:
    """Load and validate the whole config (errors name the key before anything starts), fix the
    run directory, and build what every rank runs.

    ``payload`` replaces ``-m grpo train ...`` (tests run a small torch.distributed program).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"grpo launch: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    cfg = load_config(config_path, overrides)
    lc = cfg.launch
    run_dir = resolve_run_dir(cfg.train.output_dir, backend, lc.nnodes)
    log_dir = Path(lc.log_dir).expanduser().absolute() if lc.log_dir else run_dir / "logs"
    if payload is None:
        args = ["-m", "grpo", "train"]
        if config_path is not None:
            args += ["--config", str(Path(config_path).absolute())]
        # the trainer ignores launch.*, and gets the directory resolved here in place of the
        # user's (a {timestamp} filled in once, an absolute path)
        kept = [o for o in overrides if not _override_key(o).startswith(("launch.", "launch="))]
        kept = [o for o in kept if _override_key(o) != "train.output_dir"]
        payload = [*args, *kept, f"train.output_dir={_yaml_str(str(run_dir))}"]
    return Job(
        backend=backend,
        cfg=cfg,
        payload=list(payload),
        run_dir=run_dir,
        log_dir=log_dir,
        cwd=Path.cwd(),
        started=time.time() - 1.0,  # clock granularity; a previous launch is further back
    )


def say(msg: str) -> None:
    print(f"grpo launch: {msg}", file=sys.stderr, flush=True)


def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)


class LogFollower:
    """Copies what a rank appends to its log onto our stdout (``tail -f`` that we pump)."""

    def __init__(self, path: Path, out=None):
        self.path = path
        self.offset = 0
        self.out = out if out is not None else sys.stdout

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                if f.tell() < self.offset:  # recreated by a new start of the rank
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        if data:
            self.offset += len(data)
            self.write(data)

    def write(self, data: bytes) -> None:
        self.out.write(data.decode("utf-8", errors="replace"))
        self.out.flush()


def report(
    job: Job,
    records: dict[int, RankRecord],
    fallback_code: int,
    *,
    read_tail=None,
    ranks: range | list[int] | None = None,
) -> int:
    """Say which rank failed first and where its log is; return the job's exit code.

    The code is the failed rank's own exit code when one is known, else ``fallback_code``
    (the launcher's view: torchrun's or the job's code). ``read_tail(record)`` gives the last
    lines of a log that may live on another machine (Ray); by default the file is read here.
    ``ranks``: the ranks this launcher started (local with several nodes: this node's).
    """
    mine = range(job.world_size) if ranks is None else ranks
    fail = first_failure(records)
    halted = [r for r in stopped(records) if r in mine]
    if fail is None and halted:
        code = records[halted[0]].exit_code or fallback_code
        say(
            f"ranks {halted} stopped on a signal (exit {code}) and saved a checkpoint; continue "
            "with the same command and train.resume=auto"
        )
        return fallback_code or code
    if fail is None and fallback_code == 0:
        unfinished = sorted(r for r in mine if r not in records or records[r].exit_code is None)
        if unfinished:  # the launcher saw success but a rank left no end record: not success
            say(f"ranks {unfinished} left no exit record in {job.log_dir}")
            return 1
        return 0
    if fail is not None:
        say(
            f"rank {fail.rank} failed with exit code {fail.exit_code} on {fail.host} "
            f"(node {fail.node_rank}, local rank {fail.local_rank}); its log: {fail.log}"
        )
        lines = read_tail(fail) if read_tail else tail(fail.log)
        if lines:
            print(_indent(lines), file=sys.stderr, flush=True)
        code = fail.exit_code or 1
    else:
        code = fallback_code
    killed = sorted(r.rank for r in records.values() if r.ended is None and r.rank in mine)
    missing = sorted(set(mine) - set(records))
    if killed:
        say(
            f"ranks {killed} left no exit record: stopped by a signal, or ended at once by the "
            "trainer when it learned of the failure"
        )
    if missing and fail is None:
        say(
            f"ranks {missing} never started (no record in {job.log_dir}); the launcher's own "
            "output above says why"
        )
    say(f"job failed with exit code {code}; per-rank logs: {job.log_dir}")
    return code


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


def job_records(job: Job) -> dict[int, RankRecord]:
    return read_records(job.log_dir, since=job.started)


def first_log(job: Job, rank: int = 0) -> Path:
    return log_path(job.log_dir, rank)


def clear_rank_files(job: Job, ranks: range | list[int]) -> None:
    """Move the logs and records an earlier launch left for these ranks aside (``.1``, ...), so
    the log we stream is this launch's; the ranks write new ones when they start."""
    for r in ranks:
        rotate(job.log_dir, r)
