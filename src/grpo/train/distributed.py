"""The world of a run: which rank this process is, how many there are, and the reductions.

A run is one process (``grpo train``) or several started by torchrun, a launcher, Ray or Slurm
(``torchrun --nproc-per-node N -m grpo train``), which set the standard torch.distributed
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT or a rendezvous). With one process
no process group exists and every helper here is the identity, so the single-process trainer
pays nothing.

Conventions, as in nanoGPT's ``master_process``: ``world.is_main`` (rank 0) alone writes files
and prints; every rank computes, and whatever sums over the batch goes through these helpers.
"""

from __future__ import annotations

import datetime
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from grpo.errors import ConfigError

# A collective that waits longer than this is a hang, not a slow step: the job ends with an
# error instead of sitting idle on a cluster. Generation on a busy rank can take minutes, so
# this is generous; a failing rank is detected much faster by the failure watchdog.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """This rank's device: its local GPU under NCCL, else the CPU."""
        if self.backend == "nccl" or (self.backend is None and torch.cuda.is_available()):
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shares(self, total: int, what: str) -> int:
        """``total / world_size``, or a clear error when it does not divide evenly."""
        if total % self.world_size:
            raise ConfigError(
                f"{what}={total} must be divisible by the number of ranks ({self.world_size})"
            )
        return total // self.world_size


SINGLE = World()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_world(timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """The world from the environment; joins the process group when there are several ranks.

    gloo on CPUs, NCCL when every rank has a GPU. A process group that is already initialised
    (a test, or a caller that set one up) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return World(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    world_size = env_world_size()
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    world = World(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    start_failure_watchdog(world)
    return world


def shutdown(world: World, *, clean: bool = True) -> None:
    """Leave the process group (a group left alive can abort the process at exit). ``clean``:
    every rank got here, so wait for the others first; after a failure there is no one to
    wait for."""
    if world.distributed and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            _watchdog_stop.set()  # the others may now exit and take the store with them
            dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce(world: World, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over ranks (sum, max or min), in place and returned; gloo reduces on the
    CPU, so a CUDA tensor under gloo would fail: tensors here live on ``world.device()``."""
    if not world.distributed:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t


def all_reduce_floats(world: World, values: list[float], op: str = "sum") -> list[float]:
    """Floats reduced over ranks in one collective (float64, so counts stay exact)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=world.device())
    return all_reduce(world, t, op).tolist()


def all_gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects; for small per-step data)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(world: World, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(world: World, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not world.distributed:
        return flag
    return all_reduce_floats(world, [1.0 if flag else 0.0], "max")[0] > 0


# ---- a failing rank ends the job ------------------------------------------------------------

_watchdog_stop = threading.Event()

FAILURE_KEY = "grpo/failed"
WATCH_INTERVAL_S = 0.5
FAILED_PEER_GRACE_S = 3.0


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


def report_failure(world: World, error: BaseException) -> None:
    """Tell every rank that this one failed, and with what, through the rendezvous store: the
    others stop at once instead of waiting in a collective this rank will never join."""
    if not world.distributed or not dist.is_initialized():
        return
    message = f"rank {world.rank}: {type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        if not _store().check([FAILURE_KEY]):
            _store().set(FAILURE_KEY, message)
    except Exception:  # the store may be gone with the rank that hosted it
        pass


def failure_of_another_rank(world: World) -> str | None:
    """The first failure another rank reported, if any."""
    if not world.distributed or not dist.is_initialized():
        return None
    try:
        if _store().check([FAILURE_KEY]):
            message = _store().get(FAILURE_KEY).decode()
            if not message.startswith(f"rank {world.rank}:"):
                return message
    except Exception:
        return None
    return None


def start_failure_watchdog(world: World) -> None:
    """A daemon thread that ends this process (exit 1) within about a second of another rank
    reporting a failure, or of the rendezvous store disappearing (the rank or launcher that
    hosted it died), printing which rank failed and why."""
    if not world.distributed:
        return
    import sys

    store = _store()

    def watch() -> None:
        lost = 0
        while not _watchdog_stop.wait(WATCH_INTERVAL_S):
            try:
                failed = store.check([FAILURE_KEY])
                message = store.get(FAILURE_KEY).decode() if failed else ""
                lost = 0
            except Exception as e:  # the store is gone: whoever hosted it died
                lost += 1  # (or the run just ended: shutdown() stops this thread first)
                failed, message = lost >= 4, f"lost the rendezvous store ({type(e).__name__})"
            if _watchdog_stop.is_set():
                return
            if failed and not message.startswith(f"rank {world.rank}:"):
                print(f"[rank {world.rank}] stopping: {message}", file=sys.stderr, flush=True)
                os._exit(1)

    _watchdog_stop.clear()
    threading.Thread(target=watch, name="grpo-failure-watchdog", daemon=True).start()
