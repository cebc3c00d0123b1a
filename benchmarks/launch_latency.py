"""How long each launcher takes to run a small job, and to end one whose rank fails.

    .venv/bin/python benchmarks/launch_latency.py        # needs Ray, and a Slurm cluster
                                                         # (sudo bash scripts/local_slurm.sh)

Every backend (local, ray on a Ray cluster started here, slurm) runs the test payload
(tests/launch/payload.py: init_process_group(gloo), all_reduce, a file per rank) on 2 ranks,
three ways: ok; fail (rank 1 raises, rank 0 sleeps as if blocked in a collective); fail-hang
(rank 0 also ignores SIGTERM, like a trainer busy saving). Prints the wall time of the
launcher and, for the failures, the seconds from rank 1's exit to the launcher's, which the
launch issue bounds at 60 s. Defaults otherwise (launch.stop_grace_s=30).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "launch"))

from conftest import launch_cmd, payload  # noqa: E402

from grpo.launch.records import read_records  # noqa: E402


def main() -> None:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024**2,
    )
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="launch-latency-"))
    print("| backend | payload | exit code | launcher wall time | rank 1's exit -> launcher's |")
    print("|---|---|---|---|---|")
    try:
        for backend in ("local", "ray", "slurm"):
            for mode in (["ok"], ["fail", "1"], ["fail-hang", "1"]):
                d = work / f"{backend}-{mode[0]}"
                overrides = ["launch.nproc_per_node=2", f"train.output_dir={d}"]
                if backend == "ray":
                    overrides.append(f"launch.ray_address={address}")
                t0 = time.time()
                r = subprocess.run(
                    launch_cmd(backend, overrides, payload(d / "out", *mode)),
                    capture_output=True,
                    text=True,
                    cwd=work,
                )
                t1 = time.time()
                rec = read_records(d / "logs").get(1)
                after = f"{t1 - rec.ended:.1f} s" if mode[0] != "ok" and rec else "-"
                print(f"| {backend} | {mode[0]} | {r.returncode} | {t1 - t0:.1f} s | {after} |")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
