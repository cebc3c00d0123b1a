"""One rank of a launched job: its output into ``LOG_DIR/rank{RANK}.log``, an exit record beside it.

``python -m grpo.launch.rank LOG_DIR -- PYTHON_ARGS...`` runs ``python PYTHON_ARGS...`` (e.g.
``-m grpo train --config run.yaml``) in this very process, after pointing file descriptors 1 and
2 at the rank's log file. Every launcher starts ranks through it, so each backend leaves the same
files behind and the launcher can name a failed rank and its log.

In-process on purpose: the trainer stays the process that torchrun, Slurm or the Ray actor
signals, so its SIGTERM handler sees each signal exactly once, and nothing it writes, even from
C code or just before a crash, passes through a pipe that could lose it.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import time
import traceback
from pathlib import Path

from grpo.launch.records import RankRecord, log_path, write_record


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise SystemExit(
                f"grpo.launch.rank: {name} is not set; start ranks with torchrun or grpo launch"
            )
        return default
    return int(value)


def _run_python(args: list[str]) -> int:
    """``python ARGS`` in this process; the exit code it would have had."""
    if not args:
        raise SystemExit("grpo.launch.rank: nothing to run after '--'")
    try:
        if args[0] == "-m":
            if len(args) < 2:
                raise SystemExit("grpo.launch.rank: -m needs a module name")
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path.insert(0, str(Path(args[0]).resolve().parent))
            runpy.run_path(args[0], run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:  # the traceback belongs in the rank's log, then a failing exit
        traceback.print_exc()
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m grpo.launch.rank LOG_DIR -- PYTHON_ARGS...")
    log_dir = Path(argv[0])
    rank = _env_int("RANK")
    record = RankRecord(
        rank=rank,
        local_rank=_env_int("LOCAL_RANK", 0),
        node_rank=_env_int("GROUP_RANK", 0),
        host=socket.gethostname(),
        pid=os.getpid(),
        log=str(log_path(log_dir, rank)),
        started=time.time(),
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(record.log, "w", encoding="utf-8") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    write_record(log_dir, record)

    code = _run_python(argv[2:])

    sys.stdout.flush()
    sys.stderr.flush()
    record.ended = time.time()
    record.exit_code = code
    write_record(log_dir, record)
    return code


if __name__ == "__main__":
    sys.exit(main())
