"""GRPO against PPO with a critic (``algorithm.advantage=gae``): peak memory and seconds per step.

    .venv/bin/python benchmarks/grpo_vs_ppo.py                 # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/grpo_vs_ppo.py --rounds 2 --steps 5

The medium benchmark model of ``vs_trl.py`` (a random Llama, hidden 512 x 8 layers, 33.6M
parameters, character tokenizer, saved to ``runs/bench/grpo-vs-ppo/model``) and its batch of
8 prompts x G=8 = 64 completions, here of 64 tokens (EOS suppressed, so every step generates
the same 4096 tokens). Both variants run through ``python -m grpo train`` with the same
settings: beta=0.04 (a reference pass each), mu=1, the whole batch as one micro-batch, bf16
autocast where the CPU has it, the same reward; PPO adds the critic (the policy's body with a
scalar head, its AdamW state, a values pass and a value-loss forward + backward per step).

The variants alternate (grpo, ppo, grpo, ppo, ...). s/step is the median of metrics.jsonl's
``time/step`` over each run's steps after the first (which carries one-off warm-up costs);
peak RSS is the largest resident memory of the run's process tree (polled every 0.2 s) or
the kernel's high-water mark of the process, whichever is larger. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from vs_trl import CONFIGS, build_model, fmt_table, run_child, write_prompts  # noqa: E402

PHASES = ("generate", "reference", "values", "update", "critic_update", "sync")


def overrides(model: Path, prompts: Path, out: Path, shape, args) -> list[str]:
    reward = f"{BENCH / 'bench_reward.py'}:digit_fraction"
    return [
        f"model.name_or_path={model}",
        "model.dtype=auto",
        "data.task=file",
        f"data.train_path={prompts}",
        f"rollout.engine={args.engine}",
        f"rollout.max_new_tokens={shape.max_new_tokens}",
        "rollout.ignore_eos=true",
        f"algorithm.group_size={shape.group_size}",
        "algorithm.beta=0.04",
        "algorithm.num_iterations=1",
        f"rewards=[{{name: '{reward}', weight: 1.0}}]",
        "optim.lr=1e-5",
        "optim.warmup_ratio=0.0",
        f"train.steps={args.steps}",
        f"train.batch_size={shape.prompts_per_step * shape.group_size}",
        f"train.micro_batch_size={args.micro_batch}",
        "train.seed=0",
        "train.eval_every=0",
        "train.save_every=0",
        "train.save_final=false",
        "data.num_eval_prompts=1",
        "log.progress_bar=false",
        "log.plot=false",
        f"train.output_dir={out}",
    ]


VARIANTS = {
    "grpo": [],
    "ppo (gae + critic)": ["algorithm.advantage=gae", "critic.lr=1e-5"],
}


def one_run(name: str, extra: list[str], work: Path, shape, args, index: int) -> dict:
    out = work / f"run-{index}-{name.split()[0]}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "grpo",
        "train",
        *overrides(work / "model", work / "prompts.jsonl", out, shape, args),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = run_child(cmd, env, work / f"run-{index}.log")
    if child.returncode != 0:
        raise SystemExit(f"{name}: exit {child.returncode}, see {work / f'run-{index}.log'}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "time/step" in m][1:]  # after the first
    return {
        "step_s": [m["time/step"] for m in steps],
        "phases": {p: [m.get(f"time/{p}", 0.0) for m in steps] for p in PHASES},
        "peak_rss_mib": child.peak_rss_mib,
        "foreign_cores": child.foreign_cores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="steps per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs per variant")
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens")
    ap.add_argument("--micro-batch", type=int, default=64, help="train.micro_batch_size")
    ap.add_argument("--engine", default="transformers", help="rollout.engine")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "grpo-vs-ppo")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")

    shape = dataclasses.replace(CONFIGS["medium"], max_new_tokens=args.tokens)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "model" / "config.json").is_file():
        build_model(shape, work / "model", seed=0)
    if not (work / "prompts.jsonl").is_file():
        write_prompts(work / "prompts.jsonl", 512, seed=0)

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    index = 0
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            print(f"run {index}: {name} ...", flush=True)
            runs[name].append(one_run(name, extra, work, shape, args, index))
            index += 1

    results = {}
    for name, rs in runs.items():
        results[name] = {
            "sec_per_step": statistics.median(x for r in rs for x in r["step_s"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "phases": {p: statistics.median(x for r in rs for x in r["phases"][p]) for p in PHASES},
            "foreign_cores_max": max(r["foreign_cores"] for r in rs),
            "sec_per_step_runs": [statistics.median(r["step_s"]) for r in rs],
        }
    grpo, ppo = results["grpo"], results["ppo (gae + critic)"]
    rows = [["variant", "s/step", "peak RSS MiB", "phases (s, medians)", "s/step of each run"]]
    for name, r in results.items():
        phases = ", ".join(f"{p} {v:.2f}" for p, v in r["phases"].items() if v > 0)
        each = ", ".join(f"{x:.2f}" for x in r["sec_per_step_runs"])
        rows.append([name, f"{r['sec_per_step']:.2f}", f"{r['peak_rss_mib']:.0f}", phases, each])
    rows.append(
        [
            "ppo / grpo",
            f"{ppo['sec_per_step'] / grpo['sec_per_step']:.2f}x",
            f"{ppo['peak_rss_mib'] / grpo['peak_rss_mib']:.2f}x",
            "",
            "",
        ]
    )
    print(
        f"\nmedium model (hidden {shape.hidden} x {shape.layers} layers), "
        f"{shape.prompts_per_step} prompts x G={shape.group_size} x {shape.max_new_tokens} "
        f"tokens, micro-batch {args.micro_batch}, engine {args.engine}, {args.rounds} run(s) of "
        f"{args.steps} steps per variant (first step not timed); other processes kept up to "
        f"{max(r['foreign_cores_max'] for r in results.values()):.2f} cores busy\n"
    )
    print(fmt_table(rows))
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": settings, **results}, indent=1))


if __name__ == "__main__":
    main()
