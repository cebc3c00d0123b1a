"""LoRA against full fine-tuning: peak memory and seconds per step, same model and batch.

    .venv/bin/python benchmarks/lora_vs_full.py --config medium --steps 5 --repeats 2

Builds the benchmark model of ``benchmarks/vs_trl.py`` (a random Llama; ``medium`` is 512 x 8
layers, 8 prompts x 8 completions x 128 tokens, EOS ignored), then runs ``grpo train``
alternately with full fine-tuning and with ``model.lora_rank=R`` (adapters on every linear
layer), each as a child process whose peak resident memory (its process tree) is watched.
Seconds per step: the median of ``time/step`` in metrics.jsonl over the steps after the first
(the first holds the warm-up), then the median over repeats. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _ours_worker import config_overrides  # noqa: E402
from vs_trl import CONFIGS, build_model, run_child, write_prompts  # noqa: E402

PHASES = ("time/generate", "time/reference", "time/update", "time/sync")


def run_one(args, shape, model_dir: Path, prompts: Path, lora_rank: int, index: int) -> dict:
    work = REPO / "runs" / "bench" / "lora_vs_full" / f"{'lora' if lora_rank else 'full'}-{index}"
    spec = {
        "model_dir": str(model_dir),
        "prompts_path": str(prompts),
        "bf16": True,
        "max_new_tokens": shape.max_new_tokens,
        "group_size": shape.group_size,
        "beta": 0.04,
        "lr": args.lr_lora if lora_rank else args.lr_full,
        "steps": args.steps,
        "batch_size": shape.prompts_per_step * shape.group_size,
        "micro_batch_size": shape.prompts_per_step * shape.group_size,
        "seed": 0,
        "work_dir": str(work),
    }
    overrides = config_overrides(spec, args.engine)
    overrides += ["train.resume=never", f"train.threads={args.threads}"]
    if lora_rank:
        overrides += [f"model.lora_rank={lora_rank}", f"model.lora_alpha={2 * lora_rank}"]
    cmd = [sys.executable, "-m", "grpo", "train", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    work.parent.mkdir(parents=True, exist_ok=True)
    child = run_child(cmd, env, work.parent / f"{work.name}.log")
    if child.returncode != 0:
        raise SystemExit(f"run failed ({child.returncode}): see {work.parent / work.name}.log")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r][1:]  # the first step is the warm-up
    return {
        "s_per_step": statistics.median(r["time/step"] for r in steps),
        "phases": {k: statistics.median(r.get(k, 0.0) for r in steps) for k in PHASES},
        "peak_rss_mib": child.peak_rss_mib,
        "foreign_cores": child.foreign_cores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="medium", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--engine", default="vllm", help="rollout.engine for both (default vllm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr-full", type=float, default=1e-5)
    ap.add_argument("--lr-lora", type=float, default=1e-4)
    args = ap.parse_args()

    shape = CONFIGS[args.config]
    root = REPO / "runs" / "bench" / args.config
    model_dir, prompts = root / "model", root / "prompts.jsonl"
    if not (model_dir / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        build_model(shape, model_dir, seed=0)
    if not prompts.is_file():
        write_prompts(prompts, 512, seed=0)

    results: dict[str, list[dict]] = {"full": [], "lora": []}
    for i in range(args.repeats):  # alternate, so drift in the machine's load hits both
        for name, rank in (("full", 0), ("lora", args.rank)):
            r = run_one(args, shape, model_dir, prompts, rank, i)
            results[name].append(r)
            print(
                f"{name} #{i}: {r['s_per_step']:.2f} s/step, peak {r['peak_rss_mib']:.0f} MiB, "
                f"other load {r['foreign_cores']:.2f} cores",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    def phase(name: str, key: str) -> float:
        return statistics.median(r["phases"][key] for r in results[name])

    print()
    print(
        f"{args.config}: {shape.hidden} x {shape.layers} Llama, {shape.prompts_per_step} x "
        f"{shape.group_size} x {shape.max_new_tokens} tokens, engine {args.engine}, "
        f"{args.steps} steps x {args.repeats} runs each, LoRA rank {args.rank} on every linear "
        "layer"
    )
    print()
    print("| | peak RSS (MiB) | s/step | generate | reference | update | sync |")
    print("|---|---|---|---|---|---|---|")
    for name in ("full", "lora"):
        cells = [f"{phase(name, k):.2f}" for k in PHASES]
        print(
            f"| {name} | {med(name, 'peak_rss_mib'):.0f} | {med(name, 's_per_step'):.2f} | "
            + " | ".join(cells)
            + " |"
        )
    print(
        f"| LoRA / full | {med('lora', 'peak_rss_mib') / med('full', 'peak_rss_mib'):.2f}x | "
        f"{med('lora', 's_per_step') / med('full', 's_per_step'):.2f}x | | | | |"
    )


if __name__ == "__main__":
    main()
