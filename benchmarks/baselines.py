"""GRPO, its variants and PPO with a critic on the multistep task: one table, one plot.

    .venv/bin/python benchmarks/baselines.py                       # 7 variants x 3 seeds
    .venv/bin/python benchmarks/baselines.py --seeds 0 --variants grpo ppo --write-docs

Every run is ``python -m grpo train --config examples/multistep.yaml`` (the shipped
tiny-multistep model, 8 prompts x G=8 per step, one thread, training stopped by the config's
9-minute limit, held-out greedy accuracy on 200 problems every 20 steps and at the end) with
``train.seed`` and the variant's overrides below; nothing else changes between variants. Runs
go ``--parallel`` at a time (default 2, one per core: the config trains on one thread), seeds
in the outer loop so that an interrupted sweep still has every variant at the first seeds.

Per variant: held-out accuracy before and after (mean and sample std over the seeds), the
steps and wall time until the held-out curve first reached 90 % of that run's final gain,
median ``time/step`` and peak RSS (the kernel's high-water mark of the run's process). The
curves go to ``<out>/baselines.png``; ``--write-docs`` puts the table into docs/baselines.md
between its ``bench:baselines`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from vs_trl import fmt_table, run_child  # noqa: E402

CONFIG = REPO / "examples" / "multistep.yaml"


def _task_config():
    """examples/multistep.yaml as the trainer reads it (the file's keys over the defaults)."""
    sys.path.insert(0, str(REPO / "src"))
    from grpo.config import load_config

    return load_config(str(CONFIG), [])


def _with_overlong_shaping() -> str:
    """The config's own rewards plus DAPO's soft overlong punishment (64-token limit, the
    last 16 tokens penalised), as one ``rewards=[...]`` override: a list override replaces
    the whole list, so the task's rewards must be repeated."""
    rewards = _task_config().rewards  # the file's, else the defaults
    entries = [f"{{name: {r.name}, weight: {r.weight}}}" for r in rewards]
    entries.append(
        "{name: soft_overlong, weight: 1.0, kwargs: {max_completion_length: 64, buffer: 16}}"
    )
    return f"rewards=[{', '.join(entries)}]"


# The settings each method's paper (or its reference implementation) uses, on top of the
# task's config (beta 0.04, k3, G=8, mu=1, lr 1e-4).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "grpo": (
        "GRPO (DeepSeekMath): group-std advantages, sequence-mean token-mean loss, beta 0.04",
        ["algorithm.advantage=grpo", "algorithm.loss_aggregation=grpo"],
    ),
    "dr_grpo": (
        "Dr. GRPO: no std scaling, constant-length normaliser, no KL",
        [
            "algorithm.advantage=dr_grpo",
            "algorithm.loss_aggregation=dr_grpo",
            "algorithm.beta=0.0",
        ],
    ),
    "dapo": (
        "DAPO: clip-higher 0.28, token-mean loss, dynamic sampling, soft overlong, no KL",
        [
            "algorithm.eps_high=0.28",
            "algorithm.loss_aggregation=dapo",
            "algorithm.dynamic_sampling_rounds=2",
            "algorithm.beta=0.0",
            _with_overlong_shaping(),
        ],
    ),
    "rloo": ("RLOO: leave-one-out baseline, no std scaling", ["algorithm.advantage=rloo"]),
    "gspo": ("GSPO: sequence-level ratio and clip (3e-4 / 4e-4)", ["algorithm.policy_loss=gspo"]),
    "cispo": (
        "CISPO: clipped IS weight on REINFORCE, token-mean loss",
        ["algorithm.policy_loss=cispo"],
    ),
    "ppo": (
        "PPO with a critic: GAE (gamma 1, lambda 0.95), value clip 0.2, critic lr 1e-3",
        ["algorithm.advantage=gae"],
    ),
}


@dataclass
class RunResult:
    variant: str
    seed: int
    returncode: int
    before: float | None
    after: float | None
    steps: int
    train_s: float
    s_per_step: float | None
    peak_rss_mib: float
    steps_to_90: int | None
    seconds_to_90: float | None
    curve: list[tuple[int, float]]  # (step, held-out accuracy)


def run_one(variant: str, seed: int, out: Path, extra: list[str]) -> RunResult:
    run_dir = out / f"{variant}-s{seed}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [
        sys.executable,
        "-m",
        "grpo",
        "train",
        "--config",
        str(CONFIG),
        f"train.seed={seed}",
        f"train.output_dir={run_dir}",
        "log.progress_bar=false",
        *VARIANTS[variant][1],
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    out.mkdir(parents=True, exist_ok=True)
    child = run_child(cmd, env, out / f"{variant}-s{seed}.log")
    return read_run(variant, seed, run_dir, child.returncode, child.peak_rss_mib)


def read_run(variant: str, seed: int, run_dir: Path, code: int, rss: float) -> RunResult:
    metrics_path = run_dir / "metrics.jsonl"
    records = []
    if metrics_path.is_file():
        records = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    steps = [r for r in records if "time/step" in r]
    elapsed = {r["step"]: r["time/elapsed"] for r in steps}
    curve = [(int(r["step"]), float(r["eval/accuracy"])) for r in records if "eval/accuracy" in r]
    before = curve[0][1] if curve else None
    after = curve[-1][1] if len(curve) > 1 else None
    steps_to_90 = seconds_to_90 = None
    if before is not None and after is not None and after > before:
        goal = before + 0.9 * (after - before)
        steps_to_90 = next(s for s, acc in curve[1:] if acc >= goal - 1e-12)
        seconds_to_90 = elapsed.get(steps_to_90)
    times = [r["time/step"] for r in steps[1:]]  # the first step carries compile warm-up
    return RunResult(
        variant=variant,
        seed=seed,
        returncode=code,
        before=before,
        after=after,
        steps=len(steps),
        train_s=steps[-1]["time/elapsed"] if steps else 0.0,
        s_per_step=statistics.median(times) if times else None,
        peak_rss_mib=rss,
        steps_to_90=steps_to_90,
        seconds_to_90=seconds_to_90,
        curve=curve,
    )


def _mean_std(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not xs:
        return "-"
    m = statistics.mean(xs) * scale
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs) * scale:.{digits}f}"


def table(results: list[RunResult]) -> str:
    rows = []
    for name in VARIANTS:
        rs = [r for r in results if r.variant == name and r.after is not None]
        if not rs:
            continue
        gains = [r.after - r.before for r in rs]  # type: ignore[operator]
        rows.append(
            [
                name,
                str(len(rs)),
                _mean_std([r.before for r in rs], 100),  # type: ignore[misc]
                _mean_std([r.after for r in rs], 100),  # type: ignore[misc]
                _mean_std(gains, 100),
                _mean_std([float(r.steps) for r in rs], digits=0),
                _mean_std([float(r.steps_to_90) for r in rs if r.steps_to_90], digits=0),
                _mean_std([r.seconds_to_90 for r in rs if r.seconds_to_90], digits=0),
                _mean_std([r.s_per_step for r in rs if r.s_per_step], digits=3),
                f"{max(r.peak_rss_mib for r in rs):.0f}",
            ]
        )
    head = [
        "variant",
        "seeds",
        "held-out before %",
        "after %",
        "gain (points)",
        f"steps ({_task_config().train.steps} or 9 min)",
        "steps to 90% of gain",
        "seconds to 90%",
        "s/step",
        "peak RSS MiB",
    ]
    return fmt_table([head, *rows])


def plot(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(VARIANTS):
        rs = [r for r in results if r.variant == name and r.curve]
        for j, r in enumerate(rs):
            steps, acc = zip(*r.curve, strict=True)
            ax.plot(
                steps,
                [100 * a for a in acc],
                color=f"C{i}",
                alpha=0.85,
                lw=1.4,
                label=name if j == 0 else None,
            )
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title("multistep task, tiny-multistep model, one core each")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(md: str) -> Path:
    path = REPO / "docs" / "baselines.md"
    begin, end = "<!-- bench:baselines:begin -->", "<!-- bench:baselines:end -->"
    text = path.read_text() if path.is_file() else f"# Baselines\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{md}\n{end}{tail}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "baselines")
    ap.add_argument("--write-docs", action="store_true", help="update docs/baselines.md")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the table and plot from <out>/results.json",
    )
    ap.add_argument("overrides", nargs="*", help="extra key=value for every run")
    args = ap.parse_args()

    jobs = [(v, s) for s in args.seeds for v in args.variants]
    results: list[RunResult] = []
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        results = [RunResult(**{**r, "curve": [tuple(x) for x in r["curve"]]}) for r in saved]
        results = [r for r in results if (r.variant, r.seed) in set(jobs)]
        jobs = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                variant, seed = jobs.pop(0)
            print(f"[start] {variant} seed {seed}", flush=True)
            r = run_one(variant, seed, args.out, args.overrides)
            with lock:
                results.append(r)
                (args.out / "results.json").write_text(
                    json.dumps([asdict(x) for x in results], indent=1)
                )
            print(
                f"[done] {variant} seed {seed}: rc {r.returncode}, {r.before} -> {r.after} in "
                f"{r.steps} steps, {r.s_per_step} s/step, {r.peak_rss_mib:.0f} MiB",
                flush=True,
            )

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    failed = [r for r in results if r.returncode != 0]
    md = table(results)
    png = args.out / "baselines.png"
    plot(results, png)
    cmd = "python benchmarks/baselines.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--variants", *args.variants, *args.overrides]
    )
    notes = [
        "",
        "Variants (overrides on top of examples/multistep.yaml):",
        "",
        *[f"- `{v}`: {VARIANTS[v][0]} (`{' '.join(VARIANTS[v][1])}`)" for v in args.variants],
        "",
        f"Runs {args.parallel} at a time, one thread each, on "
        f"{os.cpu_count()} cores; {date.today().isoformat()}. "
        f"Failed runs: {', '.join(f'{r.variant} s{r.seed}' for r in failed) or 'none'}.",
        "",
        f"Command: `{cmd} --write-docs`",
    ]
    md = md + "\n" + "\n".join(notes)
    print(md)
    if args.write_docs:
        import shutil

        docs_png = REPO / "docs" / "baselines.png"
        shutil.copyfile(png, docs_png)
        print(f"updated {write_docs(md)} and {docs_png}")


if __name__ == "__main__":
    main()
