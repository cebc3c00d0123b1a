"""``grpo launch ray``: one Ray actor per rank, each running the trainer as its own process.

A placement group holds one bundle per node (nproc_per_node ranks' CPUs and GPUs): PACK for
one node, SPREAD across nodes (best effort, so a one-node cluster can still host a two-"node"
test). Every actor learns where Ray put it; the driver then gives each rank the
torch.distributed environment (MASTER_ADDR = rank 0's node, a free port there, RANK,
WORLD_SIZE, LOCAL_RANK by physical node), streams rank 0's log, and ends the job when a rank
fails or on Ctrl-C: every rank gets SIGTERM, then SIGKILL after launch.stop_grace_s.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from grpo.config import ConfigError
from grpo.launch.common import Job, LogFollower, report, say, shell_join
from grpo.launch.records import RankRecord, log_path, record_path, rotate, tail

POLL_S = 0.5
SETTLE_S = 5.0  # after a failure, how long the other ranks may take to end by themselves
PG_TIMEOUT_S = 120.0


try:  # looked up here, not in the forked child (dlopen after fork can deadlock)
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the rank's process before exec: SIGKILL it if the actor dies (ray.kill, lost driver),
    so no trainer outlives its actor. Linux only; elsewhere a no-op."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RankActor:
    """Runs one rank. Threaded (max_concurrency > 1): ``run`` blocks while ``read_log`` and
    ``stop`` still answer."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_dir: str | None = None
        self.rank: int | None = None

    def where(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def run(self, payload: list[str], env: dict[str, str], cwd: str, log_dir: str) -> dict:
        self.log_dir, self.rank = log_dir, int(env["RANK"])
        os.makedirs(log_dir, exist_ok=True)
        rotate(log_dir, self.rank)
        argv = [sys.executable, "-m", "grpo.launch.rank", log_dir, "--", *payload]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=cwd if os.path.isdir(cwd) else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() signals all it started
            preexec_fn=_die_with_parent,
        )
        code = self.proc.wait()
        try:
            rec = json.loads(record_path(log_dir, self.rank).read_text())
        except (OSError, ValueError):
            rec = None
        return {"returncode": code, "record": rec}

    def read_log(self, offset: int, limit: int = 1 << 20) -> tuple[bytes, int]:
        if self.log_dir is None or self.rank is None:
            return b"", offset
        try:
            with open(log_path(self.log_dir, self.rank), "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except OSError:
            return b"", offset
        return data, offset + len(data)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_dir is None or self.rank is None:
            return ""
        return tail(log_path(self.log_dir, self.rank), lines)

    def stop(self, grace_s: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Plan:
    bundles: list[dict[str, float]]
    strategy: str
    cpus_per_rank: float
    gpus_per_rank: float


def plan(job: Job) -> Plan:
    lc = job.launch
    if not lc.wait:
        raise ConfigError(
            "key 'launch.wait': the Ray actors live as long as this driver; to leave a job "
            "running, submit the launcher itself: ray job submit -- grpo launch ray ..."
        )
    if lc.gpus_per_node % lc.nproc_per_node:
        raise ConfigError(
            f"key 'launch.gpus_per_node': {lc.gpus_per_node} GPUs do not split evenly over "
            f"launch.nproc_per_node={lc.nproc_per_node} ranks"
        )
    if lc.cpus_per_rank == 0 and lc.gpus_per_node == 0:
        raise ConfigError("key 'launch.cpus_per_rank': a rank needs a CPU or a GPU on Ray")
    gpus = lc.gpus_per_node / lc.nproc_per_node
    bundle: dict[str, float] = {}
    if lc.cpus_per_rank:
        bundle["CPU"] = float(lc.cpus_per_rank * lc.nproc_per_node)
    if gpus:
        bundle["GPU"] = float(lc.gpus_per_node)
    return Plan(
        bundles=[dict(bundle) for _ in range(lc.nnodes)],
        strategy="PACK" if lc.nnodes == 1 else "SPREAD",
        cpus_per_rank=float(lc.cpus_per_rank),
        gpus_per_rank=gpus,
    )


def rank_envs(job: Job, where: list[dict[str, Any]], master_port: int) -> list[dict[str, str]]:
    """The torch.distributed environment of every rank, from where Ray placed each actor.

    LOCAL_RANK counts ranks on the same physical node (SPREAD may put two bundles on one);
    CUDA_VISIBLE_DEVICES lists the node's GPUs in local-rank order, so ``cuda:LOCAL_RANK`` is
    the GPU Ray gave that very rank.
    """
    world = len(where)
    nodes: dict[str, list[int]] = {}
    for rank, w in enumerate(where):
        nodes.setdefault(w["node_id"], []).append(rank)
    node_index = {node: i for i, node in enumerate(nodes)}
    envs = []
    for rank, w in enumerate(where):
        peers = nodes[w["node_id"]]
        env = {
            "MASTER_ADDR": where[0]["ip"],
            "MASTER_PORT": str(master_port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(peers.index(rank)),
            "LOCAL_WORLD_SIZE": str(len(peers)),
            "GROUP_RANK": str(node_index[w["node_id"]]),
            "PYTHONUNBUFFERED": "1",
        }
        gpus = [g for r in peers for g in where[r]["gpu_ids"]]
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default, for the same reason
            env["OMP_NUM_THREADS"] = str(max(1, int(job.launch.cpus_per_rank)))
        envs.append(env)
    return envs


def _dry_run(job: Job, p: Plan) -> int:
    lc = job.launch
    addr = lc.ray_address or "a new local Ray cluster"
    print(f"ray: {addr}; placement group {p.bundles} strategy {p.strategy}")
    print(
        f"{job.world_size} actors (num_cpus={p.cpus_per_rank:g}, num_gpus={p.gpus_per_rank:g}),"
        f" rank r in bundle r // {lc.nproc_per_node}, each running in {job.cwd}:"
    )
    print(
        "  MASTER_ADDR=<rank 0's node> MASTER_PORT=<free port there> RANK=r "
        f"WORLD_SIZE={job.world_size} LOCAL_RANK=<r on its node> "
        f"{shell_join(job.rank_argv('python'))}"
    )
    return 0


def run(job: Job) -> int:
    p = plan(job)
    if job.launch.dry_run:
        return _dry_run(job, p)
    try:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError as e:
        raise ConfigError(
            f"grpo launch ray needs Ray ({e}); install it with: pip install 'grpo[ray]'"
        ) from e

    lc = job.launch
    started_here = False
    if not ray.is_initialized():
        if lc.ray_address:
            ray.init(address=lc.ray_address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=100 * 1024**2,  # we pass no tensors through it
            )
            started_here = True
    say(f"ray: {ray.cluster_resources()}; {job.world_size} ranks; logs in {job.log_dir}")
    pg = placement_group(p.bundles, strategy=p.strategy)
    actors: list[Any] = []
    try:
        ready, _ = ray.wait([pg.ready()], timeout=PG_TIMEOUT_S)
        if not ready:
            raise ConfigError(
                f"launch: the Ray cluster cannot hold {lc.nnodes} x {p.bundles[0]} (nodes x "
                f"resources per node) within {PG_TIMEOUT_S:.0f} s; it has "
                f"{ray.available_resources()} free; lower launch.nproc_per_node, "
                "launch.cpus_per_rank or launch.gpus_per_node"
            )
        cls = ray.remote(RankActor)
        for rank in range(job.world_size):
            actors.append(
                cls.options(
                    num_cpus=p.cpus_per_rank,
                    num_gpus=p.gpus_per_rank,
                    max_concurrency=4,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg,
                        placement_group_bundle_index=rank // lc.nproc_per_node,
                    ),
                ).remote()
            )
        where = ray.get([a.where.remote() for a in actors])
        port = lc.master_port or ray.get(actors[0].free_port.remote())
        envs = rank_envs(job, where, port)
        say(
            f"rank 0 on {where[0]['host']} ({where[0]['ip']}:{port}); "
            f"{len({w['node_id'] for w in where})} node(s)"
        )
        return _follow(job, actors, envs)
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)
        if started_here:
            ray.shutdown()


def _follow(job: Job, actors: list[Any], envs: list[dict[str, str]]) -> int:
    import ray
    from ray.exceptions import RayActorError

    refs = {
        actors[r].run.remote(job.payload, envs[r], str(job.cwd), str(job.log_dir)): r
        for r in range(len(actors))
    }
    results: dict[int, dict | None] = {}
    offset = 0
    out = LogFollower(job.log_dir / "rank0.log")  # used only to write what rank 0's actor sends
    failed: int | None = None
    interrupted = False

    def pump() -> None:
        nonlocal offset
        with contextlib.suppress(RayActorError):
            data, offset = ray.get(actors[0].read_log.remote(offset))
            if data:
                out.write(data)

    try:
        while refs and failed is None:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
            pump()
            for ref in done:
                rank = refs.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except RayActorError as e:
                    say(f"rank {rank}'s actor died: {e}")
                    results[rank] = None
                if results[rank] is None or results[rank]["returncode"] != 0:
                    failed = rank
                    break
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping every rank (Ctrl-C again kills them)")
    if refs and failed is not None:
        # the trainer's own watchdog ends the other ranks within a second or two of a failure;
        # let them (and a failed rank still writing its traceback) finish on their own first
        res = results[failed]
        code = res["returncode"] if res else "none (its actor died)"
        say(f"rank {failed} ended with exit code {code}; stopping the other ranks")
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=SETTLE_S)
        for ref in done:
            rank = refs.pop(ref)
            try:
                results[rank] = ray.get(ref)
            except RayActorError:
                results[rank] = None
    if refs:  # a rank failed or Ctrl-C: the others must not wait in a collective forever
        grace = job.launch.stop_grace_s
        try:
            ray.get([a.stop.remote(grace) for a in actors], timeout=grace + 30)
        except KeyboardInterrupt:
            say("killing every rank")
        except Exception as e:  # an actor already gone, or stop() itself timed out
            say(f"stopping the ranks: {type(e).__name__}: {e}")
        for ref, rank in list(refs.items()):
            try:
                results[rank] = ray.get(ref, timeout=5)
            except Exception:
                results[rank] = None
    pump()

    records: dict[int, RankRecord] = {}
    for rank, res in results.items():
        if res and res.get("record"):
            records[rank] = RankRecord(**res["record"])

    def read_tail(rec: RankRecord) -> str:
        try:
            return ray.get(actors[rec.rank].log_tail.remote(), timeout=10)
        except Exception:
            return ""

    if interrupted:
        report(job, records, 130, read_tail=read_tail)
        return 130
    rank0 = results.get(0)
    fallback = 1 if failed is not None else (rank0["returncode"] if rank0 else 1)
    return report(job, records, fallback, read_tail=read_tail)
