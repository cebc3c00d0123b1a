"""`grpo launch ray`: one Ray actor per rank on a real local Ray cluster."""

from __future__ import annotations

import time

from conftest import check_all_reduce, check_failure, payload, run_launch


def test_two_ranks_on_a_joined_cluster(tmp_path, ray_cluster):
    out = tmp_path / "out"
    fin = run_launch(
        "ray",
        [
            "launch.nproc_per_node=2",
            f"launch.ray_address={ray_cluster}",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        payload(out),
        cwd=tmp_path,
    )
    ranks = check_all_reduce(fin, out, 2)
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    assert {r["env"]["LOCAL_WORLD_SIZE"] for r in ranks} == {"2"}
    assert "1 node(s)" in fin.err


def test_failing_rank_stops_every_actor(tmp_path, ray_cluster):
    # rank 1 raises; rank 0 sleeps ignoring SIGTERM: the driver must SIGKILL it after the grace
    fin = run_launch(
        "ray",
        [
            "launch.nproc_per_node=2",
            f"launch.ray_address={ray_cluster}",
            f"train.output_dir={tmp_path}",
            "launch.stop_grace_s=3",
        ],
        payload(tmp_path / "out", "fail-hang", "1"),
        cwd=tmp_path,
    )
    check_failure(fin, tmp_path / "logs", 1, time.time())
    assert "rank 1 ended with exit code 1; stopping the other ranks" in fin.err
    assert "ranks [0] left no exit record" in fin.err
