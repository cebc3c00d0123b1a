"""What the launchers would run, checked without starting anything: the config section, the
torchrun command, the sbatch script, the Ray rank environments, and the failure report."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.config import ConfigError, load_config
from grpo.launch import common, local, ray_backend, slurm
from grpo.launch.records import RankRecord, first_failure, read_records, write_record


def job(tmp_path: Path, backend: str = "local", *overrides: str, payload=None, config=None):
    return common.make_job(
        backend, config, [f"train.output_dir={tmp_path / 'run'}", *overrides], payload
    )


def test_launch_section_defaults_and_help(capsys):
    lc = load_config().launch
    assert (lc.nnodes, lc.nproc_per_node, lc.node_rank, lc.master_port) == (1, 1, 0, 0)
    assert lc.ray_address == "" and lc.wait is True and lc.dry_run is False
    assert lc.signal_before_s == 120
    assert main(["launch", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("launch.nnodes", "launch.ray_address", "launch.sbatch_lines", "launch.wait"):
        assert key in out


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["launch.node_rank=2", "launch.nnodes=2"], "launch.node_rank"),
        (["launch.master_port=70000"], "launch.master_port"),
        (["launch.nproc_per_node=0"], "launch.nproc_per_node"),
        (["launch.sbatch_lines=[qos=high]"], "launch.sbatch_lines[0]"),
        (["launch.stop_grace_s=-1"], "launch.stop_grace_s"),
    ],
)
def test_bad_launch_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config(None, overrides)


def test_backend_specific_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'launch.master_port'"):
        local.check(job(tmp_path, "local", "launch.nnodes=2"))
    with pytest.raises(ConfigError, match="'train.output_dir'"):
        common.make_job("local", None, ["launch.nnodes=2", "launch.master_port=29500"])
    with pytest.raises(ConfigError, match="'launch.gpus_per_node'"):
        ray_backend.plan(job(tmp_path, "ray", "launch.nproc_per_node=2", "launch.gpus_per_node=3"))
    with pytest.raises(ConfigError, match="'launch.stop_grace_s'"):
        slurm.script(job(tmp_path, "slurm", "launch.stop_grace_s=200"))
    with pytest.raises(ConfigError, match="'launch.wait'"):
        ray_backend.plan(job(tmp_path, "ray", "launch.wait=false"))
    assert main(["launch", "kubernetes"]) == 2


def test_run_dir_is_fixed_once_and_passed_to_every_rank(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  steps: 3\n")
    j = common.make_job(
        "ray",
        "run.yaml",
        ["train.output_dir=out/{timestamp}", "train.seed=4", "launch.nproc_per_node=2"],
    )
    assert re.fullmatch(r"\d{8}-\d{6}", j.run_dir.name) and j.run_dir.parent == tmp_path / "out"
    assert j.log_dir == j.run_dir / "logs" and j.world_size == 2
    # the same config and overrides as `grpo train`; launch.* (which it ignores) left out, the
    # output directory replaced by the one resolved here
    assert j.payload == [
        "-m",
        "grpo",
        "train",
        "--config",
        str(cfg),
        "train.seed=4",
        f"train.output_dir={j.run_dir}",
    ]
    # a directory with characters YAML would misread survives the round trip
    odd = tmp_path / "a b,{c}"
    j = common.make_job("slurm", None, [f"train.output_dir={json.dumps(str(odd))}"])
    assert j.payload[3:] == [f"train.output_dir={json.dumps(str(odd))}"]
    assert load_config(None, j.payload[3:]).train.output_dir == str(odd)


def test_torchrun_command_standalone_and_static(tmp_path):
    j = job(tmp_path, "local", "launch.nproc_per_node=2", payload=["p.py", "x"])
    argv = local.torchrun_argv(j)
    logs = j.log_dir
    assert argv == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--standalone",
        "--max-restarts=0",
        "--shutdown-timeout=30",
        f"--log-dir={logs / 'torchrun' / 'node0'}",
        "-m",
        "grpo.launch.rank",
        str(logs),
        "--",
        "p.py",
        "x",
    ]
    j = job(
        tmp_path,
        "local",
        "launch.nnodes=2",
        "launch.node_rank=1",
        "launch.master_addr=10.0.0.5",
        "launch.master_port=29511",
        payload=["p.py"],
    )
    argv = local.torchrun_argv(j)
    assert argv[3:10] == [
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=static",
        "--master-addr=10.0.0.5",
        "--master-port=29511",
        "--node-rank=1",
        "--max-restarts=0",
    ]
    assert list(local.local_ranks(j)) == [1]


def test_sbatch_script(tmp_path):
    j = job(
        tmp_path,
        "slurm",
        "launch.nnodes=2",
        "launch.nproc_per_node=4",
        "launch.gpus_per_node=4",
        "launch.cpus_per_rank=8",
        "launch.partition=gpu",
        "launch.account=rl",
        "launch.time=04:00:00",
        "launch.sbatch_lines=['--qos=high', '--exclusive']",
        "rollout.stop=['</answer> x']",
    )
    text = slurm.script(j)
    sbatch = [line[len("#SBATCH ") :] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == [
        "--job-name=grpo",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--account=rl",
        "--time=04:00:00",
        "--signal=TERM@120",
        f"--output={j.log_dir}/slurm-%j.out",
        f"--chdir={Path.cwd()}",
        "--qos=high",
        "--exclusive",
    ]
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # the srun + torchrun command, as bash will split it
    cmd = text[text.index("srun ") :].replace("\\\n", " ")
    words = shlex.split(cmd)
    assert words[:5] == [
        "srun",
        "--kill-on-bad-exit=1",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
    ]
    assert "--rdzv-backend=c10d" in words and "--nproc-per-node=4" in words
    assert "--rdzv-endpoint=$head_node:$rdzv_port" in words
    rest = words[words.index("--") + 1 :]
    assert rest[:3] == ["-m", "grpo", "train"]
    assert "rollout.stop=['</answer> x']" in rest  # one word, quotes intact

    j = job(
        tmp_path, "slurm", "launch.container_image=nvcr.io#pytorch:25.01", "launch.master_port=4242"
    )
    text = slurm.script(j)
    assert "--container-image=nvcr.io#pytorch:25.01" in text and "rdzv_port=4242" in text
    assert " python -m torch.distributed.run" in text  # the image's python, not ours


def test_ray_rank_environment_follows_placement(tmp_path):
    j = job(tmp_path, "ray", "launch.nnodes=2", "launch.nproc_per_node=2", "launch.gpus_per_node=2")
    p = ray_backend.plan(j)
    assert p.strategy == "SPREAD" and p.bundles == [{"CPU": 2.0, "GPU": 2.0}] * 2
    assert p.gpus_per_rank == 1.0
    a = {"node_id": "A", "ip": "10.0.0.1", "host": "a"}
    b = {"node_id": "B", "ip": "10.0.0.2", "host": "b"}
    where = [{**a, "gpu_ids": ["3"]}, {**a, "gpu_ids": ["1"]}, {**b, "gpu_ids": ["0"]},
             {**b, "gpu_ids": ["1"]}]  # fmt: skip
    envs = ray_backend.rank_envs(j, where, 29400)
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.1"}
    assert {e["MASTER_PORT"] for e in envs} == {"29400"}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "1"]
    assert [e["GROUP_RANK"] for e in envs] == ["0", "0", "1", "1"]
    # cuda:LOCAL_RANK is the GPU Ray gave that rank: rank 1 -> "3,1"[1] = GPU 1
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3,1", "3,1", "0,1", "0,1"]
    # SPREAD on a one-node cluster: both bundles on node A, local ranks 0..3
    envs = ray_backend.rank_envs(j, [{**a, "gpu_ids": []}] * 4, 1)
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"4"}
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in envs)
    assert ray_backend.plan(job(tmp_path, "ray")).strategy == "PACK"


def test_first_failure_is_the_earliest_non_zero_exit(tmp_path, capsys):
    def rec(rank, ended, code):
        return RankRecord(rank, rank, 0, "h", 100 + rank, f"/l/rank{rank}.log", 10.0, ended, code)

    for r in (rec(0, 20.5, 1), rec(1, 20.0, 3), rec(2, None, None), rec(3, 19.0, 0)):
        write_record(tmp_path, r)
    records = read_records(tmp_path, since=5.0)
    assert sorted(records) == [0, 1, 2, 3]
    assert first_failure(records).rank == 1  # 20.0 < 20.5; rank 3 exited 0
    assert read_records(tmp_path, since=11.0) == {}  # all started at 10.0: an earlier launch

    j = job(tmp_path, "local", "launch.nproc_per_node=4")
    assert common.report(j, records, 1) == 3  # the failed rank's own code
    err = capsys.readouterr().err
    assert "rank 1 failed with exit code 3 on h (node 0, local rank 1)" in err
    assert "its log: /l/rank1.log" in err
    assert "ranks [2] left no exit record" in err
    # every rank exited 0 but one never wrote its end: not a success
    ok = {r: rec(r, 20.0, 0) for r in range(3)}
    assert common.report(j, ok, 0) == 1
    assert common.report(j, {**ok, 3: rec(3, 20.0, 0)}, 0) == 0


def test_rank_entry_logs_and_records_the_exit(tmp_path):
    script = tmp_path / "p.py"
    script.write_text("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n"
                      "sys.exit(int(sys.argv[1]))\n")  # fmt: skip
    env = {"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "PATH": "/usr/bin:/bin"}
    for code in (0, 7):
        r = subprocess.run(
            [sys.executable, "-m", "grpo.launch.rank", str(tmp_path), "--", str(script), str(code)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == code and r.stdout == "" and r.stderr == ""
        assert (tmp_path / "rank3.log").read_text() == "to stdout\nto stderr\n"
        rec = json.loads((tmp_path / "rank3.json").read_text())
        seen = (rec["rank"], rec["local_rank"], rec["node_rank"], rec["exit_code"])
        assert seen == (3, 1, 1, code)
        assert rec["ended"] >= rec["started"]
    script.write_text("raise ValueError('boom')\n")
    r = subprocess.run(
        [sys.executable, "-m", "grpo.launch.rank", str(tmp_path), "--", str(script)], env=env
    )
    assert r.returncode == 1
    assert "ValueError: boom" in (tmp_path / "rank3.log").read_text()


def test_a_stop_on_sigterm_is_not_a_failure(tmp_path, capsys):
    def rec(rank, ended, code):
        return RankRecord(rank, rank, 0, "h", 100 + rank, f"/l/rank{rank}.log", 10.0, ended, code)

    # rank 0 saved and exited 143 (128 + SIGTERM) before rank 1 failed: rank 1 is the cause
    records = {0: rec(0, 19.0, 143), 1: rec(1, 20.0, 1)}
    assert first_failure(records).rank == 1
    # every rank stopped on SIGTERM after saving (Slurm before the time limit): say how to go on
    j = job(tmp_path, "slurm", "launch.nproc_per_node=2")
    assert common.report(j, {0: rec(0, 20.0, 143), 1: rec(1, 20.0, 143)}, 1) == 1
    err = capsys.readouterr().err
    assert "ranks [0, 1] stopped on a signal (exit 143)" in err and "train.resume=auto" in err
    assert "failed with exit code" not in err


def test_an_earlier_launch_s_files_are_kept_aside(tmp_path):
    from grpo.launch.records import rotate

    for launch_no in range(1, 6):  # five launches, each writing rank 0's log
        rotate(tmp_path, 0, keep=3)
        (tmp_path / "rank0.log").write_text(f"launch {launch_no}\n")
        write_record(tmp_path, RankRecord(0, 0, 0, "h", 1, "l", float(launch_no)))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "rank0.json",
        "rank0.json.1",
        "rank0.json.2",
        "rank0.json.3",
        "rank0.log",
        "rank0.log.1",
        "rank0.log.2",
        "rank0.log.3",
    ]
    assert [(tmp_path / n).read_text() for n in ("rank0.log", "rank0.log.1", "rank0.log.3")] == [
        "launch 5\n",
        "launch 4\n",
        "launch 2\n",
    ]
    assert list(read_records(tmp_path)) == [0]  # only the current record is read
    assert read_records(tmp_path)[0].started == 5.0
