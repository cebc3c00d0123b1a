"""``grpo launch local | ray | slurm``: start the trainer on every rank of a job.

Each backend starts ``python -m grpo train <the same config and overrides>`` on every rank with
the torch.distributed environment set, streams rank 0's log, and returns the job's exit code;
the ``launch`` section of the config says how (nodes, processes per node, rendezvous, Ray
address, Slurm settings). Each rank's output goes to ``<log_dir>/rank{R}.log`` with an exit
record ``rank{R}.json`` beside it, so a failed rank is named with its log.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

from grpo.config import ConfigError, field_docs
from grpo.launch.common import BACKENDS, Job, make_job

__all__ = ["launch", "main", "Job", "make_job"]


def launch(
    backend: str,
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    *,
    payload: list[str] | None = None,
) -> int:
    """Run a job with ``backend``; the job's exit code.

    ``payload``: the arguments to ``python`` each rank runs instead of ``-m grpo train ...``.
    """
    job = make_job(backend, config_path, list(overrides), payload)
    if backend == "local":
        from grpo.launch import local

        return local.run(job)
    if backend == "ray":
        from grpo.launch import ray_backend

        return ray_backend.run(job)
    from grpo.launch import slurm

    return slurm.run(job)


def _help() -> str:
    rows = [r for r in field_docs() if r[0].startswith("launch.")]
    width = max(len(k) for k, *_ in rows)
    keys = "\n".join(f"  {k:<{width}}  {doc} ({typ}, default {d})" for k, typ, d, doc in rows)
    return (
        textwrap.dedent("""\
        usage: grpo launch {local,ray,slurm} [--config FILE.yaml] [key=value ...]

        Start `python -m grpo train` with the same config and overrides on every rank of a job:
          local   torchrun on this machine (with launch.nnodes > 1: run it on every node,
                  each with its launch.node_rank, the same master_addr/master_port)
          ray     one Ray actor per rank on a Ray cluster (launch.ray_address; empty: a
                  local one); needs `pip install 'grpo[ray]'`
          slurm   an sbatch script (srun + torchrun), submitted and followed

        Every key of `grpo train --help` applies; the launch section says how to start:
        """)
        + keys
    )


def _parse(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config_path = None
    overrides: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config_path = next(it, None)
            if config_path is None:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; settings are given as key=value")
        else:
            overrides.append(arg)
    return config_path, overrides


def main(argv: Sequence[str]) -> int:
    """``grpo launch BACKEND [--config F] [key=value ...]`` (argv without 'launch')."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or any(a in ("-h", "--help") for a in argv[1:]):
        print(_help())
        return 0
    backend, rest = argv[0], argv[1:]
    if backend not in BACKENDS:
        print(_help(), file=sys.stderr)
        raise ConfigError(f"grpo launch: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    config_path, overrides = _parse(rest)
    return launch(backend, config_path, overrides)
