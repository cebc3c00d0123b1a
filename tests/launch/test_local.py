"""`grpo launch local`: torchrun on this machine, one "node" or two started side by side."""

from __future__ import annotations

import subprocess
import time

from conftest import check_all_reduce, check_failure, launch_cmd, payload, read_ranks, run_launch

from grpo.launch.local import free_port
from grpo.launch.records import read_records


def test_one_node_two_ranks(tmp_path):
    out = tmp_path / "out"
    fin = run_launch(
        "local",
        ["launch.nproc_per_node=2", f"train.output_dir={tmp_path / 'run'}"],
        payload(out),
        cwd=tmp_path,
    )
    ranks = check_all_reduce(fin, out, 2)
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    for r in range(2):
        log = (tmp_path / f"run/logs/rank{r}.log").read_text()
        assert f"payload rank {r}: all_reduce sum 3.0" in log


def test_failing_rank_ends_the_job_and_a_hung_rank_is_killed(tmp_path):
    # rank 1 raises; rank 0 sleeps and ignores SIGTERM, so only the launcher's SIGKILL after
    # launch.stop_grace_s ends it (torchrun alone would wait 30 s)
    fin = run_launch(
        "local",
        ["launch.nproc_per_node=2", f"train.output_dir={tmp_path}", "launch.stop_grace_s=3"],
        payload(tmp_path / "out", "fail-hang", "1"),
        cwd=tmp_path,
    )
    check_failure(fin, tmp_path / "logs", 1, time.time())
    assert "rank 0 did not stop within launch.stop_grace_s; killed it" in fin.err


def _two_nodes(tmp_path, *mode: str, node1_waits: bool = True):
    port = free_port()
    procs = [
        subprocess.Popen(
            launch_cmd(
                "local",
                [
                    "launch.nnodes=2",
                    f"launch.node_rank={r}",
                    "launch.nproc_per_node=1",
                    "launch.master_addr=127.0.0.1",
                    f"launch.master_port={port}",
                    f"train.output_dir={tmp_path / 'run'}",
                    "launch.stop_grace_s=3",
                    f"launch.wait={'true' if r == 0 or node1_waits else 'false'}",
                ],
                payload(tmp_path / "out", *mode),
            ),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        results.append((p.returncode, out, err, time.time()))
    return results


def test_two_nodes_static_rendezvous(tmp_path):
    # node 1 with launch.wait=false: its launcher returns at once, its torchrun runs on
    results = _two_nodes(tmp_path, node1_waits=False)
    assert [code for code, *_ in results] == [0, 0], results
    assert "started torchrun (pid" in results[1][2]
    ranks = read_ranks(tmp_path / "out", 2)
    assert [r["sum"] for r in ranks] == [3.0, 3.0]
    assert [r["env"]["GROUP_RANK"] for r in ranks] == ["0", "1"]
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "0"]
    assert "payload rank 0: all_reduce" in results[0][1]  # node 0 streams rank 0
    deadline = time.monotonic() + 60  # node 1's detached torchrun may end a moment later
    while time.monotonic() < deadline:
        records = read_records(tmp_path / "run/logs")
        if records.get(1) and records[1].exit_code is not None:
            break
        time.sleep(0.2)
    assert [records[r].exit_code for r in (0, 1)] == [0, 0]


def test_two_nodes_a_failure_on_node_1_stops_node_0(tmp_path):
    # rank 1 (node 1) raises; rank 0 (node 0) sleeps as if blocked in a collective: node 0's
    # launcher sees rank 1's exit record in the shared log directory and stops its rank
    results = _two_nodes(tmp_path, "fail", "1")
    from conftest import Finished

    for code, out, err, ended in results:
        check_failure(Finished(code, out, err, 0.0), tmp_path / "run/logs", 1, ended)
    assert "rank 1 failed on" in results[0][2] and "stopping this node's ranks [0]" in results[0][2]
