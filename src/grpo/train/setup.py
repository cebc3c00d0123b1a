"""Build everything a run needs, once: first ``preflight`` (rewards, data, tokenizer, model path,
output directory: cheap, and where user mistakes are), then the run directory, the models, the
engine and the optimizer."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from grpo.config import GRPOConfig, to_yaml, uses_reference_model
from grpo.core import lr_lambda_warmup_cosine
from grpo.errors import ModelError
from grpo.rewards import RewardFunction
from grpo.rollout.base import RolloutEngine
from grpo.rollout.factory import make_engine, resolve_engine_kind
from grpo.train import lora as lora_lib
from grpo.train import run_dir as run_dir_lib
from grpo.train.allocator import reuse_freed_memory
from grpo.train.checkpoint import CheckpointManager, read_manifest
from grpo.train.compile_layers import (
    compile_decoder_layers,
    compile_wanted,
    static_decode_wanted,
)
from grpo.train.critic import Critic, build_critic, critic_path
from grpo.train.distributed import SINGLE, World, broadcast_object
from grpo.train.logprob_pass import PolicyLogprobs
from grpo.train.models import autocast_dtype, frozen_reference, load_policy
from grpo.train.preflight import preflight
from grpo.train.run_log import RunLog
from grpo.train.sharding import checkpoint_name, full_weights, is_sharded, shard
from grpo.train.timing import PhaseTimer
from grpo.train.token_budget import free_memory_bytes
from grpo.train.trackers import Trackers, check_trackers_available, make_trackers


@dataclass
class Run:
    """Everything a run holds between steps (built by :func:`setup`)."""

    cfg: GRPOConfig
    world: World
    run_dir: Path
    # the trained module: the transformers model, or on several ranks the sharded
    # PolicyLogprobs around it; see ``hf_model``
    model: torch.nn.Module
    # None exactly when no step has beta > 0; with LoRA the policy itself, whose adapters
    # ``reference_pass`` switches off
    reference: torch.nn.Module | None
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
    total_steps: int = 0  # train.steps, or what train.epochs makes of it
    checkpoints: CheckpointManager | None = None
    resume_from: Path | None = None  # the checkpoint this run continues, if any
    lock: run_dir_lib.RunLock | None = None  # held by rank 0 while the run is alive
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    lora: Any = None  # the peft wrapper of the policy when model.lora_rank > 0
    critic: Critic | None = None  # advantage = gae: the value model and its optimizer
    # memory free once set up (bytes): train.micro_batch_tokens = auto sizes passes from it
    free_memory: int = 0

    def reference_pass(self) -> contextlib.AbstractContextManager[None]:
        """The block in which ``reference`` computes the reference log-probs: with LoRA the
        policy's adapters are off there (the reference is the base model)."""
        if self.lora is not None:
            return lora_lib.adapters_disabled(self.lora)
        return contextlib.nullcontext()

    @property
    def hf_model(self) -> PreTrainedModel:
        """The transformers model being trained (inside the FSDP wrapper when sharded)."""
        return self.model.lm if isinstance(self.model, PolicyLogprobs) else self.model

    def sync_engine(self) -> None:
        """Give the engine the policy's current weights: nothing to do when it samples from the
        trained module itself; the full weights gathered from the shards when sharded."""
        dtype = getattr(self.engine, "dtype", None) or torch.float32
        if self.lora is not None:
            # engines hold the plain architecture: they get W + (alpha / r) B A
            if is_sharded(self.model):
                weights = full_weights(self.model, torch.float32)
            elif self.engine_shares_model():
                return  # the transformers engine samples from the adapted model itself
            else:
                weights = (
                    (checkpoint_name(n), t.detach()) for n, t in self.model.state_dict().items()
                )
            m = self.cfg.model
            scaling = lora_lib.lora_scaling(m.lora_alpha, m.lora_rank)
            self.engine.load_weights(lora_lib.merged_weights(weights, scaling, dtype))
        elif is_sharded(self.model):
            self.engine.load_weights(full_weights(self.model, dtype))
        else:
            self.engine.sync_weights(self.hf_model)

    def engine_shares_model(self) -> bool:
        """Whether the engine generates from the trained module's own weights."""
        return getattr(self.engine, "model", None) is self.hf_model

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The policy's full weights (fp32, checkpoint names) on the main rank, None elsewhere;
        with shards a collective, so every rank calls it."""
        if not is_sharded(self.model):
            return None
        weights = full_weights(self.model, torch.float32)
        if self.world.is_main:
            return {name: t.cpu() for name, t in weights}
        for _ in weights:  # take part in every gather
            pass
        return None

    def close(self) -> None:
        """Free engines, worker pools and reward models; release the directory's lock."""
        if self.lock is not None:
            self.lock.release()
        for holder in [self.engine, *(rf.fn for rf in self.reward_fns)]:
            close = getattr(holder, "close", None)
            if callable(close):
                close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: GRPOConfig, world: World = SINGLE) -> Run:
    """Load data and rewards first (cheap, and where user mistakes are), then the models."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.reuse_freed_memory:
        reuse_freed_memory()

    check_trackers_available(list(cfg.log.trackers))  # a missing extra fails before any model
    # rewards, data, tokenizer, model path and output directory, checked before anything heavy
    pre = preflight(cfg)
    tokenizer, path = pre.tokenizer, pre.model_path
    if lora_lib.is_adapter_dir(path):
        raise ModelError(
            f"model.name_or_path: {path} is a LoRA adapter, not a whole model",
            hint=f"merge it first (grpo export {path} OUT --merge) and train from OUT",
        )
    train_prompt_ids, eval_prompt_ids = pre.train_prompt_ids, pre.eval_prompt_ids
    world.shares(
        cfg.train.batch_size // cfg.algorithm.group_size,
        "train.batch_size / algorithm.group_size (prompts per step; each rank samples whole "
        "groups)",
    )

    prompts_per_step = cfg.train.batch_size // cfg.algorithm.group_size
    total_steps = cfg.train.steps
    if cfg.train.epochs > 0:
        total_steps = max(1, math.ceil(cfg.train.epochs * len(pre.train_rows) / prompts_per_step))

    # rank 0 names the directory ({timestamp} could differ between ranks), locks it, decides
    # what to resume, and alone writes there
    lock = None
    decision = None
    if world.is_main:
        run_dir = pre.output_dir  # {timestamp} filled in, checked writable by preflight
        lock = run_dir_lib.RunLock(run_dir)
        lock.acquire()
        try:
            decision = run_dir_lib.decide(run_dir, cfg.train.resume, cfg.train.keep_last)
            if decision.resume_from is not None:
                step = read_manifest(decision.resume_from)["step"]
                run_dir_lib.truncate_logs(run_dir, step)
            (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        except BaseException:
            lock.release()
            raise
    decision = broadcast_object(world, decision)
    run_dir = decision.run_dir
    # advantage = gae: where the critic comes from, checked before any model loads
    critic_from = critic_path(cfg, path) if cfg.algorithm.advantage == "gae" else ""

    device = world.device()
    model = load_policy(
        path,
        device,
        trust_remote_code=cfg.model.trust_remote_code,
        attn_implementation=cfg.model.attn_implementation,
    )
    compute_dtype = autocast_dtype(cfg.model.dtype, device)
    # With several ranks the policy is sharded, so the transformers engine generates from an
    # unsharded inference copy that receives the full weights after every step
    # (docs/scaling.md); vLLM engines always hold their own copy. Static decoding also samples
    # from a copy, in the compute dtype: its compiled step then reads bf16 weights directly
    # instead of casting the fp32 master weights at every token.
    static_ok = static_decode_wanted(
        cfg.rollout.static_decode,
        device=device,
        distributed=world.distributed,
        deterministic=cfg.train.deterministic,
    )
    engine_kind = resolve_engine_kind(cfg.rollout.engine, model=model, static_decode=static_ok)
    static_decode = engine_kind == "transformers" and static_ok
    engine_model = model
    if world.distributed or static_decode:
        engine_model = copy.deepcopy(model)
        engine_model.requires_grad_(False)
        if static_decode and compute_dtype is not None:
            engine_model.to(compute_dtype)
    r = cfg.rollout
    longest_prompt = max(len(p) for p in train_prompt_ids + eval_prompt_ids)
    completion_room = max(r.max_new_tokens, cfg.train.eval_max_new_tokens or 0)
    # vLLM before the optimizer: on a GPU its memory share must be free when it starts. The
    # engine is built before any adapter is added: it loads (and first syncs) the plain
    # architecture, and later gets merged weights under the plain names
    engine = make_engine(
        r.engine,
        model=engine_model,
        tokenizer=tokenizer,
        model_path=path,
        # a copy already in the compute dtype needs no autocast
        autocast_dtype=None if static_decode else compute_dtype,
        max_batch_rows=r.max_batch_rows,
        vllm_memory_fraction=r.vllm_memory_fraction,
        max_model_len=r.max_model_len or longest_prompt + completion_room,
        seed=cfg.train.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        vllm_enforce_eager=r.vllm_enforce_eager,
        # a step samples batch_size sequences; a KV cache for more only costs memory
        # (evaluation of more prompts runs in waves)
        vllm_max_num_seqs=min(r.max_batch_rows, cfg.train.batch_size),
        static_decode=static_ok,
    )
    # adapters go in place: a transformers engine sharing ``model`` samples from them
    lora = add_adapters(cfg, model)
    # without LoRA a frozen copy; with LoRA the policy itself (set below, once wrapped), whose
    # adapters Run.reference_pass switches off
    reference = None
    if uses_reference_model(cfg) and lora is None:
        reference = frozen_reference(model, compute_dtype)
    model.train()
    if compile_wanted(
        cfg.train.compile,
        device=device,
        distributed=world.distributed,
        deterministic=cfg.train.deterministic,
        engine_runs_policy=getattr(engine, "model", None) is model,
    ):
        compile_decoder_layers(model)
        if reference is not None:
            compile_decoder_layers(reference)

    # the trained module is the log-prob pass around the model, on one rank too, so that the
    # checkpoints of 1 and N ranks name the weights alike (lm.*) and load into each other
    model = PolicyLogprobs(model)
    if world.distributed:
        model = shard(model, world, compute_dtype)
        if reference is not None:
            reference = shard(PolicyLogprobs(reference), world, compute_dtype)
    if lora is not None and uses_reference_model(cfg):
        reference = model
    critic = build_critic(cfg, critic_from, len(tokenizer), world, device, compute_dtype)
    # the policy's schedule spans its own updates: none during the critic's warm-up
    policy_steps = total_steps - (critic.warmup_steps if critic is not None else 0)
    optimizer, scheduler = build_optimizer(cfg, model, max(policy_steps, 1))
    return Run(
        cfg=cfg,
        world=world,
        run_dir=run_dir,
        model=model,
        reference=reference,
        tokenizer=tokenizer,
        engine=engine,
        reward_fns=pre.reward_fns,
        train_rows=pre.train_rows,
        train_prompt_ids=train_prompt_ids,
        eval_rows=pre.eval_rows,
        eval_prompt_ids=eval_prompt_ids,
        optimizer=optimizer,
        scheduler=scheduler,
        compute_dtype=compute_dtype,
        log=RunLog(
            run_dir,
            total_steps,
            progress_bar=cfg.log.progress_bar,
            log_every=cfg.log.log_every,
            enabled=world.is_main,
            trackers=build_trackers(cfg, world, run_dir, resume_from=decision.resume_from),
        ),
        step_reward=pre.step_reward,
        total_steps=total_steps,
        checkpoints=CheckpointManager(run_dir, world, cfg.train.keep_last),
        resume_from=decision.resume_from,
        lock=lock,
        lora=lora,
        critic=critic,
        free_memory=free_memory_bytes(device),
    )


def add_adapters(cfg: GRPOConfig, model: PreTrainedModel) -> Any:
    """``model.lora_rank > 0``: LoRA adapters injected into ``model`` (the peft wrapper is
    returned, None without LoRA); also gradient checkpointing when asked for."""
    m = cfg.model
    lora = None
    if m.lora_rank > 0:
        lora = lora_lib.add_lora(
            model,
            rank=m.lora_rank,
            alpha=m.lora_alpha,
            dropout=m.lora_dropout,
            target_modules=list(m.lora_target_modules),
            base_name=lora_lib.base_name_for_adapter(m.name_or_path),
        )
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora is not None:
            # the frozen embeddings give checkpointed blocks inputs without grad; the adapters
            # inside them still need one
            model.enable_input_require_grads()
    return lora


def build_trackers(
    cfg: GRPOConfig, world: World, run_dir: Path, resume_from: Path | None = None
) -> Trackers:
    """``log.trackers`` on the main process (the run directory is rank 0's); none elsewhere.
    ``resume_from``: a checkpoint whose saved tracker state continues the same tracker runs."""
    if not world.is_main or not cfg.log.trackers:
        return Trackers([])
    resume, resume_step = None, 0
    if resume_from is not None:
        saved = torch.load(resume_from / "trainer.pt", weights_only=False)["state"]
        resume, resume_step = saved.get("trackers") or None, int(saved["step"])
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return make_trackers(
        list(cfg.log.trackers),
        run_dir,
        config=config,  # type: ignore[arg-type]
        wandb_project=cfg.log.wandb_project or None,
        resume=resume,
        resume_step=resume_step,
    )


def build_optimizer(
    cfg: GRPOConfig, model: torch.nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters, with linear warm-up then cosine decay per update."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=o.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        weight_decay=o.weight_decay,
    )
    total_updates = total_steps * cfg.algorithm.num_iterations
    warmup = round(o.warmup_ratio * total_updates)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda_warmup_cosine(s, warmup, total_updates, min_ratio=o.min_lr_ratio),
    )
    return optimizer, scheduler
