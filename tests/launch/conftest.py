"""Fixtures for the launcher tests: a real local Ray cluster, a real one-node Slurm, and a helper
that runs a launcher in its own process (as a user's shell would) with a payload.

`make test` installs Ray and sets GRPO_REQUIRE_RAY=1; `.ci/run` starts Slurm with
scripts/local_slurm.sh and sets GRPO_REQUIRE_SLURM=1. With those set a missing component fails
the tests; without them the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = Path(__file__).resolve().parent / "payload.py"
LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"


@dataclass
class Finished:
    code: int
    out: str
    err: str
    seconds: float


def launch_cmd(backend: str, overrides: list[str], payload: list[str] | None) -> list[str]:
    """`grpo launch` in a fresh interpreter; with a payload, through the Python API."""
    if payload is None:
        return [sys.executable, "-m", "grpo.cli", "launch", backend, *overrides]
    code = (
        "import sys; from grpo.launch import launch; "
        f"sys.exit(launch({backend!r}, None, {overrides!r}, payload={payload!r}))"
    )
    return [sys.executable, "-c", code]


def run_launch(
    backend: str,
    overrides: list[str],
    payload: list[str] | None = None,
    *,
    cwd: Path,
    timeout: float = 300,
) -> Finished:
    t0 = time.monotonic()
    r = subprocess.run(
        launch_cmd(backend, overrides, payload),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return Finished(r.returncode, r.stdout, r.stderr, time.monotonic() - t0)


def payload(out: Path, *mode: str) -> list[str]:
    return [str(PAYLOAD), str(out), *mode]


def read_ranks(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="session")
def ray_installed():
    if os.environ.get("GRPO_REQUIRE_RAY") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'grpo[ray]'")
    return ray


@pytest.fixture(scope="module")
def ray_cluster(ray_installed):
    """A real local Ray cluster of 2 logical CPUs in this process; launchers join it."""
    ray = ray_installed
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024**2,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node Slurm cluster of scripts/local_slurm.sh (started here under CI)."""
    if os.environ.get("GRPO_REQUIRE_SLURM") == "1":
        subprocess.run(["bash", str(LOCAL_SLURM)], check=True, timeout=600)
    elif subprocess.run(["bash", str(LOCAL_SLURM), "--status"], capture_output=True).returncode:
        pytest.skip(
            "no Slurm cluster answers here; start one with `sudo bash scripts/local_slurm.sh` "
            "(CI does, and sets GRPO_REQUIRE_SLURM=1)"
        )
    yield


def check_all_reduce(fin: Finished, out: Path, world: int) -> list[dict]:
    """Every rank joined one group of `world` and summed rank + 1: 1 + 2 + ... + world."""
    assert fin.code == 0, fin.out + fin.err
    ranks = read_ranks(out, world)
    for r, seen in enumerate(ranks):
        assert seen["rank"] == r and seen["world_size"] == world
        assert seen["env"]["RANK"] == str(r) and seen["env"]["WORLD_SIZE"] == str(world)
        assert seen["sum"] == world * (world + 1) / 2  # world 2: 1 + 2 = 3
    # rank 0's output streams to the console, the others' stay in their logs
    assert "payload rank 0: all_reduce sum" in fin.out
    assert "payload rank 1: all_reduce sum" not in fin.out
    return ranks


def check_failure(fin: Finished, log_dir: Path, bad_rank: int, ended_by: float) -> None:
    """The job ended non-zero within 60 s of the failure, naming the rank and its log."""
    from grpo.launch.records import read_records

    assert fin.code != 0, fin.out + fin.err
    rec = read_records(log_dir)[bad_rank]
    assert rec.exit_code == 1
    assert ended_by - rec.ended < 60, f"{ended_by - rec.ended:.0f} s after the failure"
    log = log_dir / f"rank{bad_rank}.log"
    assert f"rank {bad_rank} failed with exit code 1" in fin.err, fin.err
    assert f"its log: {log}" in fin.err
    assert f"payload: rank {bad_rank} fails on purpose" in log.read_text()
    assert f"payload: rank {bad_rank} fails on purpose" in fin.err  # the log's tail, shown
