"""A short real GRPO training of the shipped model on 2 ranks under each launcher, spelled as a
user would type it: `grpo launch local` on two "nodes", `grpo launch ray` (a local Ray cluster
it starts), `grpo launch slurm` on the one-node cluster of scripts/local_slurm.sh."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import launch_cmd, run_launch

from grpo.launch.local import free_port

pytestmark = pytest.mark.slow

SHORT = [
    "rollout.engine=transformers",
    "rollout.static_decode=false",  # the eager engine: no compile time per test
    "train.eval_every=0",
    "train.steps=2",
    "train.seed=0",
    "train.batch_size=16",  # one group of 8 per rank
    "data.num_eval_prompts=8",
    "algorithm.beta=0.0",  # no reference model: the launcher is under test, not the KL
    "log.progress_bar=false",
    "log.plot=false",
    "train.save_final=false",
]


def check_run(run_dir: Path, code: int, output: str) -> None:
    assert code == 0, output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward/mean" in r] == [1, 2]  # rank 0 alone logs
    for r in range(2):  # every rank ran the trainer and left its log and exit record
        assert json.loads((run_dir / f"logs/rank{r}.json").read_text())["exit_code"] == 0
    assert "held-out accuracy:" in (run_dir / "logs/rank0.log").read_text()


def test_local_two_nodes(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    procs = [
        subprocess.Popen(
            launch_cmd(
                "local",
                [
                    *SHORT,
                    "launch.nnodes=2",
                    f"launch.node_rank={r}",
                    "launch.nproc_per_node=1",
                    "launch.master_addr=127.0.0.1",
                    f"launch.master_port={port}",
                    f"train.output_dir={run_dir}",
                ],
                None,
            ),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    check_run(run_dir, 0, outputs[0])
    assert "held-out accuracy:" in outputs[0]  # node 0 streams rank 0


def test_ray(tmp_path, ray_installed):
    fin = run_launch(
        "ray",
        [*SHORT, "launch.nproc_per_node=2", f"train.output_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        timeout=600,
    )
    check_run(tmp_path / "run", fin.code, fin.out + fin.err)
    assert "held-out accuracy:" in fin.out


def test_slurm(tmp_path, slurm_cluster):
    fin = run_launch(
        "slurm",
        [
            *SHORT,
            "launch.nnodes=1",
            "launch.nproc_per_node=2",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    check_run(tmp_path / "run", fin.code, fin.out + fin.err)
    assert "held-out accuracy:" in fin.out


def test_local_trainer_failing_on_one_rank(tmp_path):
    # a reward function that raises on rank 1 only: the trainer's own failure watchdog and the
    # launcher together end the job, naming rank 1, its log and the error in it
    bad = tmp_path / "bad_reward.py"
    bad.write_text(
        "import os\n"
        "def bad(prompts, completions, **kw):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('reward fails on rank 1 on purpose')\n"
        "    return [0.0] * len(completions)\n"
    )
    fin = run_launch(
        "local",
        [
            *SHORT,
            "launch.nproc_per_node=2",
            f"rewards=[{{name: {bad}:bad}}]",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    log = tmp_path / "run/logs/rank1.log"
    assert fin.code == 1, fin.out + fin.err
    assert "rank 1 failed with exit code 1 on" in fin.err and f"its log: {log}" in fin.err
    assert "reward fails on rank 1 on purpose" in log.read_text()
    assert "reward fails on rank 1 on purpose" in fin.err  # the log's tail, shown
