"""The command line: ``grpo train`` and ``grpo eval``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence

from grpo.config import ConfigError, field_docs, load_config
from grpo.launch import main as _cmd_launch


def _train_help() -> str:
    rows = field_docs()
    width = max(len(k) for k, *_ in rows)
    lines = [
        "usage: grpo train [--config FILE.yaml] [key=value ...]",
        "",
        "Train a causal LM with GRPO. With no arguments: the shipped tiny model on the built-in",
        "arithmetic task (a few minutes on a laptop CPU). Settings come from the defaults, then",
        "the YAML file, then key=value overrides (e.g. algorithm.group_size=16,",
        "rollout.stop=['</answer>'], rewards=[{name: accuracy, weight: 1.0}]).",
        "",
        "options:",
        "  --config FILE   YAML file with any of the keys below",
        "  -h, --help      show this help and exit",
        "",
        "keys (type, default):",
    ]
    section = ""
    for key, typ, default, doc in rows:
        head = key.split(".")[0].split("[")[0]
        if head != section:
            section = head
            lines.append("")
        lines.append(f"  {key:<{width}}  {doc}")
        lines.append(f"  {'':<{width}}    ({typ}, default {default})")
    return "\n".join(lines)


def _cmd_train(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_train_help())
        return 0
    config_path = None
    overrides: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config_path = next(it, None)
            if config_path is None:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; settings are given as key=value")
        else:
            overrides.append(arg)
    cfg = load_config(config_path, overrides)

    from grpo.train.loop import Stopped, train  # heavy imports only once the config is valid

    try:
        summary = train(cfg)
    except Stopped as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"{stop}; resume: {resume_command(config_path, overrides, stop.run_dir)}")
        return 128 + stop.signum
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 speaks for the job
    if "accuracy_before" in summary:
        print(
            f"held-out accuracy: {100 * summary['accuracy_before']:.1f}% -> "
            f"{100 * summary['accuracy_after']:.1f}% "
            f"({summary['accuracy_gain_points']:+.1f} points) after {summary['steps']} steps "
            f"in {summary['wall_time_s']:.0f}s"
        )
    print(f"run directory: {summary['run_dir']} (summary.json, metrics.jsonl, curves.png)")
    return 0


def resume_command(config_path: str | None, overrides: Sequence[str], run_dir: object) -> str:
    """The command that continues a stopped run: the same settings, its directory, resume."""
    import shlex

    keep = [o for o in overrides if not o.startswith(("train.resume=", "train.output_dir="))]
    parts = ["grpo", "train", *(["--config", config_path] if config_path else []), *keep]
    parts += [f"train.output_dir={run_dir}", "train.resume=auto"]
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_export(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="grpo export",
        description="Write a Hugging Face model (safetensors, config, tokenizer) from a "
        "checkpoint of a run.",
    )
    p.add_argument(
        "checkpoint",
        help="a checkpoint directory (RUN/checkpoints/step-N), or a run directory (its latest "
        "complete checkpoint)",
    )
    p.add_argument("out", help="the directory to write the model to")
    args = p.parse_args(argv)

    from grpo.train.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {path}: AutoModelForCausalLM.from_pretrained({str(args.out)!r})")
    return 0


def _cmd_eval(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="grpo eval",
        description="Greedy accuracy and pass@k of a model on prompts with an 'answer' column.",
    )
    p.add_argument(
        "model", help="model directory or hub id (builtin:tiny-arith for the shipped one)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="prompt file (.jsonl/.parquet/datasets); default: the built-in task's held-out set",
    )
    p.add_argument(
        "--gsm8k", action="store_true", help="--data is in the GSM8K question/answer format"
    )
    p.add_argument("--num-prompts", type=int, default=200, help="evaluate on the first N prompts")
    p.add_argument("--k", type=int, nargs="*", default=[], help="report pass@k for these k")
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="samples per prompt for pass@k (default: the largest k)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.k and args.samples and args.samples < max(args.k):
        p.error(f"--samples {args.samples} is less than the largest k ({max(args.k)})")
    if any(k < 1 for k in args.k):
        p.error("--k values must be at least 1")

    import torch

    from grpo.rollout.transformers_engine import TransformersEngine
    from grpo.train.evaluate import evaluate_accuracy
    from grpo.train.models import (
        autocast_dtype,
        load_policy,
        load_tokenizer,
        pick_device,
        resolve_model_path,
    )
    from grpo.train.task_data import load_rows, tokenize_prompts

    task = "gsm8k" if args.gsm8k else ("file" if args.data else "arithmetic")
    _, rows = load_rows(
        task=task,
        train_path=args.data,
        eval_path=args.data,
        split="train",
        prompt_column=args.prompt_column,
        num_train_prompts=1,
        num_eval_prompts=args.num_prompts,
        seed=args.seed,
        required_columns=["answer"],
    )
    torch.manual_seed(args.seed)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    device = pick_device()
    model = load_policy(path, device)
    engine = TransformersEngine(model, tokenizer, autocast_dtype=autocast_dtype("auto", device))
    ids = tokenize_prompts(
        rows, tokenizer, prompt_column=args.prompt_column, system_prompt=args.system_prompt
    )
    greedy = evaluate_accuracy(
        engine, ids, rows, prompt_column=args.prompt_column, max_new_tokens=args.max_new_tokens
    )
    report: dict[str, float | int] = {"prompts": len(rows), "greedy_accuracy": greedy.accuracy}
    if args.k:
        n = args.samples or max(args.k)
        sampled = evaluate_accuracy(
            engine,
            ids,
            rows,
            prompt_column=args.prompt_column,
            max_new_tokens=args.max_new_tokens,
            samples=n,
            ks=args.k,
            temperature=args.temperature,
            seed=args.seed,
        )
        report["samples_per_prompt"] = n
        report["sampled_accuracy"] = sampled.accuracy
        report.update({f"pass@{k}": v for k, v in sampled.pass_at_k.items()})
    print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "export": _cmd_export,
        "launch": _cmd_launch,
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(
            textwrap.dedent("""\
            usage: grpo {train,eval} ...

              grpo train [--config FILE] [key=value ...]   train with GRPO (--help lists every key)
              grpo eval MODEL [--data FILE] [--k 1 8]      greedy accuracy and pass@k
              grpo launch {local,ray,slurm} [--config FILE] [key=value ...]   on every rank
            """)
        )
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv[1:])
    except ConfigError as e:
        print(f"grpo: config error: {e}", file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"grpo: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
