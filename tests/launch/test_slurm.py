"""`grpo launch slurm`: sbatch + srun + torchrun on the real one-node Slurm cluster."""

from __future__ import annotations

import re
import subprocess
import time

from conftest import check_failure, payload, read_ranks, run_launch

from grpo.launch.slurm import TERMINAL, job_state


def test_two_ranks_through_sbatch_submitted_without_waiting(tmp_path, slurm_cluster):
    # launch.wait=false: submit and return; streaming with wait=true is checked by the
    # end-to-end training in test_launch_train.py
    out = tmp_path / "out"
    fin = run_launch(
        "slurm",
        [
            "launch.nproc_per_node=2",
            f"train.output_dir={tmp_path / 'run'}",
            "launch.time=00:10:00",
            "launch.wait=false",
        ],
        payload(out),
        cwd=tmp_path,
    )
    assert fin.code == 0, fin.err
    job_id = re.search(r"submitted job (\d+)", fin.err).group(1)
    try:
        deadline = time.monotonic() + 120
        while job_state(job_id)[0] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job_state(job_id) == ("COMPLETED", 0)
    finally:
        subprocess.run(["scancel", job_id])  # a no-op once it has ended; never leave one behind
    ranks = read_ranks(out, 2)
    assert [r["sum"] for r in ranks] == [3.0, 3.0]  # 1 + 2
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    script = (tmp_path / "run/logs/job.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in script and "#SBATCH --time=00:10:00" in script
    assert "rendezvous" in (tmp_path / f"run/logs/slurm-{job_id}.out").read_text()


def test_failing_rank_fails_the_job(tmp_path, slurm_cluster):
    fin = run_launch(
        "slurm",
        ["launch.nproc_per_node=2", f"train.output_dir={tmp_path}", "launch.stop_grace_s=3"],
        payload(tmp_path / "out", "fail", "1"),
        cwd=tmp_path,
    )
    check_failure(fin, tmp_path / "logs", 1, time.time())
    job_id = re.search(r"submitted job (\d+)", fin.err).group(1)
    state, code = job_state(job_id)
    assert state == "FAILED" and code != 0
