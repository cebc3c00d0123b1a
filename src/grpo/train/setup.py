"""Build everything a run needs, once: rewards and data first (cheap, and where user mistakes
are), then the run directory, the models, the engine and the optimizer."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from grpo.config import GRPOConfig, to_yaml, uses_reference_model
from grpo.core import lr_lambda_warmup_cosine
from grpo.rewards import RewardFunction
from grpo.rollout.base import RolloutEngine
from grpo.rollout.factory import make_engine
from grpo.train.distributed import SINGLE, World
from grpo.train.models import (
    autocast_dtype,
    frozen_reference,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)
from grpo.train.run_log import RunLog
from grpo.train.task_data import load_rows, tokenize_prompts
from grpo.train.timing import PhaseTimer


@dataclass
class Run:
    """Everything a run holds between steps (built by :func:`setup`)."""

    cfg: GRPOConfig
    world: World
    run_dir: Path
    model: PreTrainedModel
    reference: PreTrainedModel | None  # None exactly when no step has beta > 0
    tokenizer: Any
    engine: RolloutEngine
    reward_fns: list[RewardFunction]
    train_rows: list[dict[str, Any]]
    train_prompt_ids: list[list[int]]
    eval_rows: list[dict[str, Any]]
    eval_prompt_ids: list[list[int]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    compute_dtype: torch.dtype | None
    log: RunLog
    step_reward: RewardFunction | None = None  # advantage = process: the step reward function
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def close(self) -> None:
        """Free engines, worker pools and reward models."""
        for holder in [self.engine, *(rf.fn for rf in self.reward_fns)]:
            close = getattr(holder, "close", None)
            if callable(close):
                close()


def make_run_dir(pattern: str) -> Path:
    """A fresh run directory; one that already holds a run is refused, not appended to."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(pattern.replace("{timestamp}", stamp))
    if (path / "metrics.jsonl").exists():
        raise FileExistsError(
            f"train.output_dir: {path} already holds a run (metrics.jsonl); choose another "
            "directory or remove it (the default runs/{timestamp} is always new)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_reward_functions(cfg: GRPOConfig) -> list[RewardFunction]:
    fns = [
        RewardFunction.from_spec(
            r.name,
            weight=r.weight,
            kwargs=dict(r.kwargs),
            timeout_s=r.timeout_s,
            on_error=r.on_error,
        )
        for r in cfg.rewards
    ]
    names = [f.name for f in fns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"rewards: the functions {dup} appear twice; list each once")
    return fns


def build_step_reward(cfg: GRPOConfig) -> RewardFunction | None:
    """advantage = process: the step reward, called like any reward (timeout, errors named)."""
    a = cfg.algorithm
    if not a.step_reward:
        return None
    return RewardFunction.from_spec(
        a.step_reward, weight=1.0, kwargs=dict(a.step_reward_kwargs), on_error="raise"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: GRPOConfig, world: World = SINGLE) -> Run:
    """Load data and rewards first (cheap, and where user mistakes are), then the models."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)

    reward_fns = build_reward_functions(cfg)
    step_reward = build_step_reward(cfg)
    required = sorted(set().union(*(f.required_columns() for f in reward_fns)))
    d = cfg.data
    train_rows, eval_rows = load_rows(
        task=d.task,
        train_path=d.train_path,
        eval_path=d.eval_path,
        split=d.split,
        prompt_column=d.prompt_column,
        num_train_prompts=d.num_train_prompts,
        num_eval_prompts=d.num_eval_prompts,
        seed=cfg.train.seed,
        required_columns=required,
    )
    missing = [c for c in required if c not in train_rows[0]]
    if missing:
        raise ValueError(f"rewards need columns {missing} that the training rows do not have")

    run_dir = make_run_dir(cfg.train.output_dir)
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")

    device = world.device()
    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_policy(path, device, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    compute_dtype = autocast_dtype(cfg.model.dtype, device)
    reference = frozen_reference(model, compute_dtype) if uses_reference_model(cfg) else None
    model.train()

    tok = dict(prompt_column=d.prompt_column, system_prompt=d.system_prompt)
    train_prompt_ids = tokenize_prompts(train_rows, tokenizer, **tok)
    eval_prompt_ids = tokenize_prompts(eval_rows, tokenizer, **tok)
    r = cfg.rollout
    longest_prompt = max(len(p) for p in train_prompt_ids + eval_prompt_ids)
    completion_room = max(r.max_new_tokens, cfg.train.eval_max_new_tokens or 0)
    # vLLM before the optimizer: on a GPU its memory share must be free when it starts
    engine = make_engine(
        r.engine,
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        autocast_dtype=compute_dtype,
        max_batch_rows=r.max_batch_rows,
        vllm_memory_fraction=r.vllm_memory_fraction,
        max_model_len=r.max_model_len or longest_prompt + completion_room,
        seed=cfg.train.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        vllm_enforce_eager=r.vllm_enforce_eager,
        # a step samples batch_size sequences; a KV cache for more only costs memory
        # (evaluation of more prompts runs in waves)
        vllm_max_num_seqs=min(r.max_batch_rows, cfg.train.batch_size),
    )
    optimizer, scheduler = build_optimizer(cfg, model)
    return Run(
        cfg=cfg,
        world=world,
        run_dir=run_dir,
        model=model,
        reference=reference,
        tokenizer=tokenizer,
        engine=engine,
        reward_fns=reward_fns,
        train_rows=train_rows,
        train_prompt_ids=train_prompt_ids,
        eval_rows=eval_rows,
        eval_prompt_ids=eval_prompt_ids,
        optimizer=optimizer,
        scheduler=scheduler,
        compute_dtype=compute_dtype,
        log=RunLog(run_dir, cfg.train.steps, progress_bar=cfg.log.progress_bar),
        step_reward=step_reward,
    )


def build_optimizer(
    cfg: GRPOConfig, model: torch.nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters, with linear warm-up then cosine decay per update."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=o.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        weight_decay=o.weight_decay,
    )
    total_updates = cfg.train.steps * cfg.algorithm.num_iterations
    warmup = round(o.warmup_ratio * total_updates)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda_warmup_cosine(s, warmup, total_updates, min_ratio=o.min_lr_ratio),
    )
    return optimizer, scheduler
