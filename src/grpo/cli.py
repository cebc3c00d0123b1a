"""The command line: ``grpo train``, ``grpo eval``.

A mistake prints ``error: <message>`` in at most three lines, naming the key, file, line,
column or function, and exits 2 for bad input or 1 for a failure while running (see
``grpo.errors``); Ctrl-C prints one line and exits 130. ``--debug`` (or ``GRPO_DEBUG=1``) adds
the traceback and leaves the libraries' logging as it is. Library users get the exceptions.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from grpo.errors import ConfigError, GrpoError

# `make demo` (`grpo train` with no arguments) on this project's 2-core machine: the README's
# table. tests/test_cli.py checks that the README says the same.
DEMO_DURATION = "about a minute on 2 CPU cores"
DEBUG_ENV = "GRPO_DEBUG"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _train_help() -> str:
    from grpo.config import field_docs

    rows = field_docs()
    width = max(len(k) for k, *_ in rows)
    lines = [
        "usage: grpo train [--config FILE.yaml] [key=value ...]",
        "",
        "Train a causal LM with GRPO. With no arguments: the shipped tiny model on the built-in",
        f"arithmetic task ({DEMO_DURATION}). Settings come from the defaults, then",
        "the YAML file, then key=value overrides (e.g. algorithm.group_size=16,",
        "rollout.stop=['</answer>'], rewards=[{name: accuracy, weight: 1.0}]).",
        "",
        "options:",
        "  --config FILE   YAML file with any of the keys below",
        "  --debug         show the traceback of an error (also GRPO_DEBUG=1)",
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
    """grpo train [--config FILE] [key=value ...]   train with GRPO (--help lists every key)"""
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
                raise ConfigError("--config needs a file path", hint="grpo train --config x.yaml")
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(
                f"unknown option {arg}; settings are given as key=value",
                hint="for example optim.lr=3e-6 (grpo train --help lists every key)",
            )
        else:
            overrides.append(arg)
    from grpo.config import load_config

    cfg = load_config(config_path, overrides)
    _quiet_console()

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
    """grpo export CHECKPOINT OUT [--merge]         a Hugging Face model from a checkpoint"""
    p = argparse.ArgumentParser(
        prog="grpo export",
        description="Write a Hugging Face model (safetensors, config, tokenizer) from a "
        "checkpoint of a run.",
    )
    p.add_argument(
        "checkpoint",
        help="a checkpoint directory (RUN/checkpoints/step-N), a run directory (its latest "
        "complete checkpoint), or with --merge a LoRA adapter directory (a LoRA run's final/)",
    )
    p.add_argument("out", help="the directory to write the model to")
    p.add_argument(
        "--merge",
        action="store_true",
        help="LoRA: write the base model with the adapters merged in (from a LoRA run's "
        "checkpoint or its final/ adapter); without it a LoRA checkpoint exports the adapter",
    )
    args = p.parse_args(argv)

    from grpo.train.export import export_checkpoint
    from grpo.train.lora import is_adapter_dir

    path = export_checkpoint(args.checkpoint, args.out, merge=args.merge)
    if is_adapter_dir(args.out):
        load = f"PeftModel.from_pretrained(base, {str(args.out)!r})"
    else:
        load = f"AutoModelForCausalLM.from_pretrained({str(args.out)!r})"
    print(f"exported {path}: {load}")
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grpo eval",
        description="Greedy accuracy and pass@k of a model on prompts with an 'answer' column.",
    )
    p.add_argument(
        "model",
        help="model directory, run directory (its final/ model), hub id, or builtin:tiny-arith",
    )
    p.add_argument(
        "--data",
        default=None,
        help="prompt file (.jsonl/.parquet/datasets); default: the built-in task's held-out set",
    )
    p.add_argument(
        "--task",
        default="arithmetic",
        choices=["arithmetic", "multistep"],
        help="the built-in task whose held-out set is evaluated when --data is not given",
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
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="completion length limit in tokens"
    )
    p.add_argument(
        "--prompt-column", default="prompt", help="column holding the prompt (string or chat)"
    )
    p.add_argument(
        "--system-prompt", default=None, help="system message prepended to chat-format prompts"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also GRPO_DEBUG=1)"
    )
    return p


def _cmd_eval(argv: Sequence[str]) -> int:
    """grpo eval MODEL [--data FILE] [--k 1 8]      greedy accuracy and pass@k"""
    p = _eval_parser()
    args = p.parse_args(argv)
    if args.k and args.samples and args.samples < max(args.k):
        p.error(f"--samples {args.samples} is less than the largest k ({max(args.k)})")
    if any(k < 1 for k in args.k):
        p.error("--k values must be at least 1")
    if args.num_prompts < 1:
        p.error("--num-prompts must be at least 1")
    if args.gsm8k and not args.data:
        p.error("--gsm8k needs --data, the GSM8K .jsonl file")
    _quiet_console()

    import torch

    from grpo.data import load_gsm8k, load_prompt_rows
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

    path = resolve_model_path(_run_dir_model(args.model))
    tokenizer = load_tokenizer(path)
    if args.gsm8k:
        rows = load_gsm8k(args.data)[: args.num_prompts]
    elif args.data:
        rows = load_prompt_rows(
            args.data, prompt_column=args.prompt_column, required_columns=["answer"]
        )[: args.num_prompts]
    else:
        _, rows = load_rows(
            task=args.task,
            train_path=None,
            eval_path=None,
            split="train",
            prompt_column=args.prompt_column,
            num_train_prompts=1,
            num_eval_prompts=args.num_prompts,
            seed=args.seed,
            required_columns=["answer"],
        )
    ids = tokenize_prompts(
        rows,
        tokenizer,
        prompt_column=args.prompt_column,
        system_prompt=args.system_prompt,
        source=args.data or f"the {args.task} task",
    )
    torch.manual_seed(args.seed)
    device = pick_device()
    model = load_policy(path, device)
    engine = TransformersEngine(model, tokenizer, autocast_dtype=autocast_dtype("auto", device))
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


def _run_dir_model(name: str) -> str:
    """A run directory (what ``grpo train`` writes) stands for the model it saved in final/."""
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        final = path / "final"
        from grpo.train.lora import is_adapter_dir

        if (final / "config.json").is_file() or is_adapter_dir(final):
            return str(final)
        if (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file():
            from grpo.errors import ModelError

            raise ModelError(
                f"{name} is a run directory without a saved model (no final/config.json)",
                hint="the run ended before saving, or had train.save_final=false",
            )
    return name


def _quiet_console() -> None:
    from grpo.train.console import quiet_libraries

    quiet_libraries(debug_enabled())


# name -> command; each command's docstring is its line in the usage.
def _cmd_launch(argv: Sequence[str]) -> int:
    """grpo launch {local,ray,slurm} [key=value ...] the same training on every rank"""
    from grpo.launch import main as launch

    return launch(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "export": _cmd_export,
    "launch": _cmd_launch,
}


def _usage() -> str:
    lines = [f"usage: grpo {{{','.join(COMMANDS)}}} ...", ""]
    lines += [f"  {(cmd.__doc__ or name).strip()}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "  grpo --version        the installed version",
        "  --debug (or GRPO_DEBUG=1) shows the traceback of an error",
    ]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grpo")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from grpo import __version__

        return __version__


def _error(lines: list[str], code: int) -> int:
    from grpo.train.run_log import close_open_bars

    close_open_bars()
    sys.stdout.flush()
    print(f"error: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        os.environ[DEBUG_ENV] = "1"
        if argv[0] != "eval":  # eval's parser takes (and documents) it too
            argv.remove("--debug")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"grpo {_version()}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        return _error(
            [
                f"unknown command {name!r}{guess}; the commands are {', '.join(COMMANDS)}",
                "  grpo --help shows the usage",
            ],
            2,
        )
    debug = debug_enabled()
    from grpo.train.console import prepare_environment

    prepare_environment(debug)
    try:
        return COMMANDS[name](argv[1:])
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return _error(["interrupted (Ctrl-C)"], EXIT_INTERRUPTED)
    except GrpoError as e:
        if debug:
            traceback.print_exc()
        return _error(e.brief(), e.exit_code)
    except Exception as e:
        if debug:
            traceback.print_exc()
        return _error(_unexpected(e, debug), 1)


def _unexpected(e: Exception, debug: bool) -> list[str]:
    """An error that is not one of ours: its type and first line, and how to see more."""
    import contextlib

    text = str(e).strip().splitlines()
    first = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    more = "the traceback is above" if debug else "rerun with --debug for the traceback"
    with contextlib.suppress(ImportError):
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            return [
                f"out of memory: {first}",
                "  lower train.micro_batch_size (or set train.micro_batch_tokens), "
                "train.batch_size or rollout.max_new_tokens",
            ]
    if isinstance(e, MemoryError):
        return [f"out of memory: {first}", "  lower train.batch_size or train.micro_batch_size"]
    if isinstance(e, OSError):
        return [first, f"  ({more})"]
    return [first, f"  an unexpected error, maybe a bug in grpo: {more}, and report it"]


if __name__ == "__main__":
    sys.exit(main())
