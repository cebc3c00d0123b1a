"""Experiment trackers: every scalar of metrics.jsonl, at its step, to TensorBoard and W&B.

``log.trackers`` names them (empty by default: metrics.jsonl alone). Each tracker is optional
(``pip install grpo[tensorboard]`` / ``grpo[wandb]``); a named one that is not installed stops
the run before any model loads, saying which extra to install.

* ``tensorboard``: event files in ``<run_dir>/tensorboard`` (``tensorboard --logdir runs``).
* ``wandb``: ``wandb.init`` with the run directory as its ``dir`` and the resolved config;
  everything else comes from W&B's own environment variables (``WANDB_MODE=offline`` writes
  ``<run_dir>/wandb/offline-run-*`` for a later ``wandb sync``, ``WANDB_PROJECT``,
  ``WANDB_ENTITY``, ``WANDB_API_KEY``, ...), as W&B users expect.

Resuming: :meth:`Trackers.state_dict` holds what identifies each tracker's run (the event
directory; the W&B run id), for the checkpoint to save; :func:`make_trackers` given that state
continues the same runs: TensorBoard in the same directory, telling it to drop the events of
the interrupted run from the resumed step on (``purge_step``), W&B with ``resume="allow"`` and
the saved id.

Only the main process creates trackers (the run directory is rank 0's).
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "TRACKERS",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "check_trackers_available",
    "make_trackers",
    "scalars",
]


class Tracker(Protocol):
    name: str

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one metrics record (metrics.jsonl writes NaN as null; a tracker
    gets nothing for those)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, Real):
            continue
        f = float(v)
        if math.isfinite(f):
            out[k] = f
    return out


class TensorBoardTracker:
    """Scalars as TensorBoard events under ``<run_dir>/tensorboard``."""

    name = "tensorboard"

    def __init__(
        self, run_dir: Path, *, resume: dict[str, Any] | None = None, resume_step: int = 0
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(resume["log_dir"]) if resume else Path(run_dir) / "tensorboard"
        # purge_step: TensorBoard hides the interrupted run's events at steps >= it, so the
        # resumed steps are not drawn twice.
        purge = resume_step + 1 if resume else None
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir)}

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in ``<run_dir>/wandb``; mode, project, entity, ... from W&B's environment."""

    name = "wandb"

    def __init__(
        self,
        run_dir: Path,
        *,
        config: dict[str, Any] | None = None,
        project: str | None = None,
        run_name: str | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        import wandb

        kwargs: dict[str, Any] = {}
        if resume:
            kwargs.update(id=resume["run_id"], resume="allow")
        # wandb.init reads WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_RUN_ID, ... itself;
        # an explicit project here only replaces its default ("uncategorized").
        self.run = wandb.init(
            dir=str(run_dir),
            project=project,
            name=run_name or Path(run_dir).name,
            config=config,
            **kwargs,
        )

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        # W&B drops a step lower than the last one it saw; the same step again merges
        self.run.log(values, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def close(self) -> None:
        self.run.finish()


TRACKERS: dict[str, tuple[str, str]] = {
    # name -> (module that must import, the extra that installs it)
    "tensorboard": ("tensorboard", "grpo[tensorboard]"),
    "wandb": ("wandb", "grpo[wandb]"),
}


def check_trackers_available(names: list[str]) -> None:
    """Before any model loads: each name is known and its package imports."""
    import importlib

    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"log.trackers: {dup} listed twice")
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"log.trackers: unknown tracker {name!r}; valid names: {', '.join(TRACKERS)}"
            )
        module, extra = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"log.trackers: {name!r} needs the {module} package: pip install '{extra}'"
            ) from e


class Trackers:
    """The run's trackers as one: log to all, save all states, close all."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log(self, step: int, values: dict[str, Any]) -> None:
        numbers = scalars(values)
        if numbers:
            for t in self.trackers:
                t.log(step, numbers)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {t.name: t.state_dict() for t in self.trackers}

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def make_trackers(
    names: list[str],
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    wandb_project: str | None = None,
    resume: dict[str, dict[str, Any]] | None = None,
    resume_step: int = 0,
) -> Trackers:
    """The trackers named in ``log.trackers`` (main process only).

    Args:
        names: e.g. ["tensorboard", "wandb"]; [] gives an empty Trackers (a no-op).
        run_dir: the run directory; each tracker writes under it.
        config: the resolved config as a plain dict (W&B's run config).
        wandb_project: W&B project; None leaves it to WANDB_PROJECT or W&B's default.
        resume: a saved :meth:`Trackers.state_dict`, to continue the same tracker runs.
        resume_step: the last step the checkpoint holds (later events are superseded).
    """
    check_trackers_available(names)
    resume = resume or {}
    out: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            out.append(
                TensorBoardTracker(run_dir, resume=resume.get(name), resume_step=resume_step)
            )
        else:
            out.append(
                WandbTracker(run_dir, config=config, project=wandb_project, resume=resume.get(name))
            )
    return Trackers(out)
