"""1 process against N ranks (torchrun, FSDP2) on the same run: seconds per step and where
they go.

    .venv/bin/python benchmarks/ranks.py                     # 1 vs 2 ranks on this machine
    .venv/bin/python benchmarks/ranks.py --ranks 1,2,4,8 --engine vllm --model PATH   # a GPU box

Runs ``grpo train`` (1 rank) and ``torchrun --nproc-per-node N -m grpo train`` alternately,
``--rounds`` times each, on the shipped model with the default task unless told otherwise,
and reads ``time/*`` per step from metrics.jsonl (the first ``--warmup`` steps excluded).
Prints a markdown table: median s/step, completion tokens/s, the per-phase medians, and the
speed-up over 1 rank. Every run gets the same global batch (train.batch_size is global), so
N ranks each generate and train 1/N of it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("generate", "score", "reference", "update", "sync")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(ranks: int, args: list[str], out: Path, threads_per_rank: int) -> list[dict]:
    overrides = [*args, f"train.output_dir={out}", f"train.threads={threads_per_rank}"]
    if ranks == 1:
        cmd = [sys.executable, "-m", "grpo", "train", *overrides]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
            "-m",
            "grpo",
            "train",
            *overrides,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks} ranks failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "loss" in m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="1,2", help="comma list of rank counts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--model", default="builtin:tiny-arith")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads per rank (0: cores / ranks)"
    )
    ap.add_argument("extra", nargs="*", help="more key=value overrides")
    args = ap.parse_args()
    counts = [int(x) for x in args.ranks.split(",")]
    base = [
        f"model.name_or_path={args.model}",
        f"rollout.engine={args.engine}",
        f"train.steps={args.steps}",
        "train.eval_every=0",
        "data.num_eval_prompts=1",
        "train.save_every=0",
        "train.save_final=false",
        "log.progress_bar=false",
        "log.plot=false",
        *args.extra,
    ]
    cores = os.cpu_count() or 1
    steps: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in counts:
                threads = args.threads or max(1, cores // n)
                out = Path(tmp) / f"r{r}-n{n}"
                t = time.time()
                records = run_once(n, base, out, threads)
                steps[n] += records[args.warmup :]
                print(f"round {r + 1}: {n} rank(s) done in {time.time() - t:.0f} s", flush=True)
    one = statistics.median(m["time/step"] for m in steps[counts[0]])
    print()
    print("| ranks | s/step | completion tok/s | " + " | ".join(PHASES) + " | speed-up |")
    print("|---|---|---|" + "---|" * len(PHASES) + "---|")
    for n in counts:
        s = statistics.median(m["time/step"] for m in steps[n])
        tok = statistics.median(m["tokens"] / m["time/step"] for m in steps[n])
        phases = [statistics.median(m.get(f"time/{p}", 0.0) for m in steps[n]) for p in PHASES]
        cells = " | ".join(f"{x:.3f}" for x in phases)
        print(f"| {n} | {s:.3f} | {tok:.0f} | {cells} | {one / s:.2f}x |")
    load = os.getloadavg()
    print(f"\nload average during the runs (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"command: python benchmarks/ranks.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
