"""The GRPO training loop.

One step reads like the algorithm (DeepSeekMath, arXiv 2402.03300, Algorithm 1):

    sample prompts -> G completions each -> rewards -> group advantages
    -> reference log-probs (beta > 0) -> mu updates over micro-batches
    -> weights to the engine -> metrics -> periodic evaluation

Every formula lives in ``grpo.core``; this module only moves data between the stages.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from grpo.config import GRPOConfig, to_yaml, uses_reference_model
from grpo.core import (
    AdvantageOutput,
    LossStats,
    beta_at,
    compute_advantages,
    grpo_loss,
    informative_groups,
    kl_reward_penalty,
    loss_normalizer,
    lr_lambda_warmup_cosine,
    mask_truncated,
    process_advantages,
    truncated_is_weights,
)
from grpo.rewards import (
    RewardFunction,
    RewardScores,
    completion_text,
    resolve_reward,
    score_completions,
)
from grpo.rewards.step_rewards import steps_to_token_ends
from grpo.rollout.base import Completion, RolloutEngine, SamplingSettings
from grpo.rollout.factory import make_engine
from grpo.train.batch import RolloutBatch, build_batch
from grpo.train.evaluate import evaluate_accuracy
from grpo.train.logprob_pass import completion_logprobs
from grpo.train.models import (
    autocast_dtype,
    frozen_reference,
    load_policy,
    load_tokenizer,
    pick_device,
    resolve_model_path,
)
from grpo.train.run_log import RunLog, plot_curves
from grpo.train.task_data import load_rows, prompt_batches, tokenize_prompts


@dataclass
class Run:
    """Everything a run holds between steps."""

    cfg: GRPOConfig
    run_dir: Path
    model: PreTrainedModel
    reference: PreTrainedModel | None
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
    step_fn: Callable[..., Any] | None = None  # advantage = process: the step reward function
    # this step's seconds per phase and generated tokens (dynamic sampling repeats rounds)
    step_counters: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def timed(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.step_counters[phase] += now - since
        return now


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


def setup(cfg: GRPOConfig) -> Run:
    """Load data and rewards first (cheap, and where user mistakes are), then the models."""
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)

    reward_fns = build_reward_functions(cfg)
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

    device = pick_device()
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
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(),
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
    return Run(
        cfg=cfg,
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
        step_fn=resolve_reward(cfg.algorithm.step_reward) if cfg.algorithm.step_reward else None,
    )


def sampling_settings(cfg: GRPOConfig, step: int) -> SamplingSettings:
    r = cfg.rollout
    return SamplingSettings(
        n=cfg.algorithm.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_new_tokens=r.max_new_tokens,
        stop=tuple(r.stop),
        ignore_eos=r.ignore_eos,
        seed=cfg.train.seed * 1_000_003 + step,
    )


def evaluate(run: Run, step: int) -> dict[str, float]:
    if not run.eval_rows:
        return {}
    cfg = run.cfg
    result = evaluate_accuracy(
        run.engine,
        run.eval_prompt_ids,
        run.eval_rows,
        prompt_column=cfg.data.prompt_column,
        max_new_tokens=cfg.train.eval_max_new_tokens or cfg.rollout.max_new_tokens,
        stop=tuple(cfg.rollout.stop),
    )
    return result.as_metrics()


@dataclass
class Sampled:
    """Prompts of one step with their G completions each (group-contiguous) and scores."""

    row_ids: list[int]  # one dataset row per group
    completions: list[Completion]  # B = len(row_ids) * G
    scores: RewardScores

    def groups(self, keep: list[int], G: int) -> Sampled:
        idx = [g * G + j for g in keep for j in range(G)]
        t = torch.tensor(idx, dtype=torch.long)
        return Sampled(
            row_ids=[self.row_ids[g] for g in keep],
            completions=[self.completions[i] for i in idx],
            scores=RewardScores(
                total=self.scores.total[t],
                per_function={k: v[t] for k, v in self.scores.per_function.items()},
                errors=self.scores.errors,
                extra=self.scores.extra,
            ),
        )

    @staticmethod
    def concat(parts: list[Sampled]) -> Sampled:
        first = parts[0].scores
        return Sampled(
            row_ids=[r for p in parts for r in p.row_ids],
            completions=[c for p in parts for c in p.completions],
            scores=RewardScores(
                total=torch.cat([p.scores.total for p in parts]),
                per_function={
                    k: torch.cat([p.scores.per_function[k] for p in parts])
                    for k in first.per_function
                },
                errors=first.errors,
                extra=first.extra,
            ),
        )


# Keyword arguments the trainer gives reward functions besides the dataset columns.
TRAINER_COLUMNS = ("group_ids", "completion_ids", "completion_lengths")


def reward_inputs(
    run: Run, row_ids: list[int], completions: list[Completion]
) -> tuple[list[Any], list[str], dict[str, list[Any]]]:
    """(prompts, completion texts, columns) aligned with the B completions."""
    G, pc = run.cfg.algorithm.group_size, run.cfg.data.prompt_column
    rows = [run.train_rows[i] for i in row_ids for _ in range(G)]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != pc}
    clash = sorted(set(columns) & set(TRAINER_COLUMNS))
    if clash:
        raise ValueError(
            f"dataset columns {clash} clash with arguments the trainer passes to reward "
            "functions; rename them"
        )
    columns["group_ids"] = [g for g in range(len(row_ids)) for _ in range(G)]
    columns["completion_ids"] = [c.token_ids for c in completions]
    columns["completion_lengths"] = [len(c.token_ids) for c in completions]
    return [r[pc] for r in rows], [c.text for c in completions], columns


def sample_and_score(run: Run, step: int, row_ids: list[int], round_: int) -> Sampled:
    cfg, G = run.cfg, run.cfg.algorithm.group_size
    settings = sampling_settings(cfg, step * 101 + round_)
    t = time.perf_counter()
    groups = run.engine.generate([run.train_prompt_ids[i] for i in row_ids], settings)
    t = run.timed("time/generate", t)
    completions = [c for g in groups for c in g]
    run.step_counters["tokens"] += sum(len(c.token_ids) for c in completions)
    prompts, texts, columns = reward_inputs(run, row_ids, completions)
    scores = score_completions(
        run.reward_fns, prompts, texts, columns, row_ids=[i for i in row_ids for _ in range(G)]
    )
    run.timed("time/score", t)
    return Sampled(row_ids, completions, scores)


def collect_rollout(
    run: Run, step: int, batches: Iterator[list[int]]
) -> tuple[Sampled, Sampled, dict[str, float]]:
    """(training batch, first sampling round, metrics).

    Without dynamic sampling, one round. With it (DAPO, arXiv 2503.14476 section 3.2), groups
    whose rewards all agree carry no signal and are dropped; new prompts are sampled for up to
    ``dynamic_sampling_rounds`` extra rounds until the batch has its number of groups. If the
    rounds run out, the step trains on the informative groups found (or, if none, on the
    first round, whose groups then contribute KL only).
    """
    cfg, G = run.cfg, run.cfg.algorithm.group_size
    want = cfg.train.batch_size // G
    first = sample_and_score(run, step, next(batches), 0)
    if cfg.algorithm.dynamic_sampling_rounds == 0:
        return first, first, {}
    kept: list[Sampled] = []
    have, rounds, consumed, current = 0, 1, want, first
    while True:
        informative = informative_groups(current.scores.total, G).tolist()
        keep = [g for g, ok in enumerate(informative) if ok][: want - have]
        if keep:
            kept.append(current.groups(keep, G))
            have += len(keep)
        if have >= want or rounds > cfg.algorithm.dynamic_sampling_rounds:
            break
        current = sample_and_score(run, step, next(batches), rounds)
        rounds += 1
        consumed += want
    batch = Sampled.concat(kept) if kept else first
    metrics = {
        "dynamic_sampling/rounds": rounds,
        "dynamic_sampling/prompts_consumed": consumed,
        "dynamic_sampling/groups_kept": have,
    }
    return batch, first, metrics


def rl_step(run: Run, step: int, batches: Iterator[list[int]]) -> dict[str, float]:
    """One GRPO step; returns the step's metrics."""
    cfg, G, a = run.cfg, run.cfg.algorithm.group_size, run.cfg.algorithm
    t0 = time.perf_counter()
    run.step_counters.clear()

    # 1-2. sample G completions per prompt and score them (dynamic sampling may repeat this)
    sampled, first, ds_metrics = collect_rollout(run, step, batches)
    completions = sampled.completions
    t = time.perf_counter()
    prompt_ids = [run.train_prompt_ids[i] for i in sampled.row_ids for _ in range(G)]
    batch = build_batch(
        prompt_ids,
        [c.token_ids for c in completions],
        torch.zeros(len(completions)),
        run.tokenizer.pad_token_id,
        engine_logprobs=[c.logprobs for c in completions] if a.tis_cap else None,
    )
    truncated = torch.tensor([c.finish_reason == "length" for c in completions])
    if a.mask_truncated:
        batch.completion_mask = mask_truncated(batch.completion_mask, truncated)
    beta = beta_at(
        step,
        cfg.train.steps,
        schedule=a.beta_schedule,
        beta=a.beta,
        beta_start=a.beta_start,
        beta_end=a.beta_end,
    )

    # 3. reference log-probs (beta > 0 only), then rewards -> group-relative advantages
    rewards = sampled.scores.total
    extra: dict[str, float] = {}
    if run.reference is not None:
        batch.ref_logprobs = batch_logprobs(run, run.reference, batch)
    if a.kl_in_reward:
        assert batch.ref_logprobs is not None
        sampling_logp = batch_logprobs(run, run.model, batch)
        penalty = kl_reward_penalty(
            sampling_logp, batch.ref_logprobs, batch.completion_mask, beta, a.kl_estimator
        )
        rewards = rewards - penalty
        extra["kl_reward_penalty"] = float(penalty.mean())
    t = run.timed("time/reference", t)
    adv = advantages(run, sampled, rewards, batch)
    batch.advantages = adv.advantages
    t = run.timed("time/score", t)

    # 4. mu updates over micro-batches, then the engine gets the new weights
    micro = [batch.rows(idx) for idx in micro_plan(run, batch)]
    update_metrics = update_policy(run, micro, batch, 0.0 if a.kl_in_reward else beta)
    t = run.timed("time/update", t)
    run.engine.sync_weights(run.model)
    t_update = run.timed("time/sync", t)

    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    n_tokens = run.step_counters["tokens"]
    metrics: dict[str, float] = {
        **first.scores.metrics(),
        "frac_zero_std": adv.frac_zero_std,
        **ds_metrics,
        **extra,
        **update_metrics,
        "beta": beta,
        "lr": run.scheduler.get_last_lr()[0],
        "completion_len/mean": float(lengths.mean()),
        "completion_len/max": float(lengths.max()),
        "truncated_frac": float(truncated.float().mean()),
        "tokens_per_s": n_tokens / (t_update - t0),
        "generate_tokens_per_s": n_tokens / max(run.step_counters["time/generate"], 1e-9),
        **run.step_counters,
        "time/step": t_update - t0,
    }
    log_samples(run, step, sampled, adv.advantages)
    return metrics


def advantages(
    run: Run, sampled: Sampled, rewards: torch.Tensor, batch: RolloutBatch
) -> AdvantageOutput:
    """Outcome estimators from the rewards [B]; ``process`` from step rewards, per token."""
    a, G = run.cfg.algorithm, run.cfg.algorithm.group_size
    if a.advantage != "process":
        kw: dict[str, Any] = {"eps": a.advantage_eps}
        if a.advantage == "grpo":
            kw["scale"] = a.scale_rewards
        return compute_advantages(a.advantage, rewards, G, **kw)
    assert run.step_fn is not None
    prompts, texts, columns = reward_inputs(run, sampled.row_ids, sampled.completions)
    steps = run.step_fn(prompts=prompts, completions=texts, **columns, **a.step_reward_kwargs)
    token_ids = [c.token_ids for c in sampled.completions]
    step_rewards, step_ends = steps_to_token_ends(steps, token_ids, run.tokenizer)
    return process_advantages(
        step_rewards, step_ends, G, batch.completion_width, eps=a.advantage_eps
    )


def log_samples(run: Run, step: int, sampled: Sampled, adv: torch.Tensor) -> None:
    k = min(run.cfg.log.samples_per_step, len(sampled.completions))
    G, pc = run.cfg.algorithm.group_size, run.cfg.data.prompt_column
    s = sampled.scores
    run.log.samples(
        step,
        [
            {
                "prompt": completion_text(run.train_rows[sampled.row_ids[i // G]][pc]),
                "completion": sampled.completions[i].text,
                "reward": _num(s.total[i]),
                **{f"reward/{n}": _num(v[i]) for n, v in s.per_function.items()},
                "advantage": float(adv[i].sum()) if adv.dim() == 2 else float(adv[i]),
                "finish_reason": sampled.completions[i].finish_reason,
            }
            for i in range(k)
        ],
    )


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


@torch.no_grad()
def batch_logprobs(run: Run, model: PreTrainedModel, batch: RolloutBatch) -> torch.Tensor:
    """[B, T] log-probs of the completion tokens under ``model``, micro-batch by micro-batch."""
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    for idx in micro_plan(run, batch):
        mb = batch.rows(idx)
        logp, _ = completion_logprobs(
            model, mb, autocast_dtype=run.compute_dtype, temperature=run.cfg.rollout.temperature
        )
        out[idx, : logp.shape[1]] = logp.cpu()
    return out


def micro_plan(run: Run, batch: RolloutBatch) -> list[torch.Tensor]:
    t = run.cfg.train
    return batch.plan(max_rows=t.micro_batch_size, max_tokens=t.micro_batch_tokens)


def update_policy(
    run: Run, micro: list[RolloutBatch], batch: RolloutBatch, beta: float
) -> dict[str, float]:
    """mu optimizer steps on one rollout batch; the loss normaliser is the whole batch's.

    With mu = 1 the old policy is the current one (ratio exactly 1, no extra pass). With
    mu > 1 the log-probs of the first pass, taken before any update, are the old log-probs of
    the later passes: same weights, same micro-batches, so no separate pass is needed.
    """
    cfg, a = run.cfg, run.cfg.algorithm
    normalizer = loss_normalizer(
        a.loss_aggregation,
        # rows with no token left in the loss (masked truncations) do not count
        num_sequences=int((batch.completion_mask.sum(1) > 0).sum()),
        num_tokens=int(batch.completion_mask.sum()),
        max_completion_length=cfg.rollout.max_new_tokens,
        num_micro_batches=len(micro),
    )
    params = [p for p in run.model.parameters() if p.requires_grad]
    device = run.model.device
    out: dict[str, float] = {}
    entropy_sum, entropy_tokens = 0.0, 0.0
    tis_sum, tis_capped = 0.0, 0.0
    for iteration in range(a.num_iterations):
        stats = LossStats.zeros(device)
        for mb in micro:
            logp, entropy = completion_logprobs(
                run.model,
                mb,
                autocast_dtype=run.compute_dtype,
                with_entropy=iteration == 0,
                temperature=cfg.rollout.temperature,
            )
            mask = mb.completion_mask.to(device)
            if iteration == 0 and a.num_iterations > 1:
                mb.old_logprobs = logp.detach()
            weights = None
            if a.tis_cap is not None:
                # the engine sampled with slightly different numerics than the trainer computes
                old = logp.detach() if iteration == 0 else mb.old_logprobs
                assert mb.engine_logprobs is not None
                weights = truncated_is_weights(old, mb.engine_logprobs.to(device), a.tis_cap, mask)
                tis_sum += float((weights * mask).sum())
                tis_capped += float(((weights >= a.tis_cap) & mask.bool()).sum())
            loss, mb_stats = grpo_loss(
                logp,
                None if iteration == 0 else mb.old_logprobs,
                None if mb.ref_logprobs is None else mb.ref_logprobs.to(device),
                mb.advantages.to(device),
                mask,
                beta=beta,
                eps_low=a.eps_low,
                eps_high=a.eps_high,
                aggregation=a.loss_aggregation,
                normalizer=normalizer,
                kl_estimator=a.kl_estimator,
                dual_clip_c=a.dual_clip_c,
                token_weights=weights,
            )
            loss.backward()
            stats = stats + mb_stats
            if entropy is not None:
                entropy_sum += float((entropy * mask).sum())
                entropy_tokens += float(mask.sum())
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if iteration == 0:
            out = {**stats.finalize(), "grad_norm": float(grad_norm)}
        elif iteration == a.num_iterations - 1:
            # the later passes are where the ratio moves away from 1 and clipping acts
            last = stats.finalize()
            out.update(
                {
                    f"last_iteration/{k}": v
                    for k, v in last.items()
                    if "clip" in k or k == "ratio_mean"
                }
            )
    out["entropy"] = entropy_sum / max(entropy_tokens, 1.0)
    if a.tis_cap is not None:
        n = max(float(batch.completion_mask.sum()) * a.num_iterations, 1.0)
        out["tis/weight_mean"] = tis_sum / n
        out["tis/capped_frac"] = tis_capped / n
    return out


def train(cfg: GRPOConfig) -> dict[str, Any]:
    """Run GRPO as configured; returns the summary also written to ``summary.json``."""
    started = time.time()
    run = setup(cfg)
    log = run.log
    log.write(f"run directory: {run.run_dir}")
    before = evaluate(run, 0)
    if before:
        log.metrics(0, before)
        log.write(f"held-out accuracy before training: {100 * before['eval/accuracy']:.1f}%")
    per_step = cfg.train.batch_size // cfg.algorithm.group_size
    batches = prompt_batches(
        len(run.train_rows), per_step, seed=cfg.train.seed, shuffle=cfg.data.shuffle
    )
    limit_s = cfg.train.time_limit_minutes * 60 or math.inf
    tokens = 0
    train_seconds = 0.0
    steps_done = 0
    for step in range(1, cfg.train.steps + 1):
        metrics = rl_step(run, step, batches)
        tokens += int(metrics["tokens"])
        train_seconds += metrics["time/step"]
        steps_done = step
        last = step == cfg.train.steps or time.time() - started > limit_s
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not last:
            metrics.update(evaluate(run, step))
        log.metrics(step, metrics)
        log.progress(metrics)
        if last:
            if step < cfg.train.steps:
                log.write(
                    f"time limit of {cfg.train.time_limit_minutes} min reached at step {step}"
                )
            break
    after = evaluate(run, steps_done)
    if after:
        log.metrics(steps_done, after)
    log.close()
    for holder in [run.engine, *(rf.fn for rf in run.reward_fns)]:  # engines, pools, models
        close = getattr(holder, "close", None)
        if callable(close):
            close()

    summary: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "steps": steps_done,
        "wall_time_s": round(time.time() - started, 1),
        "train_time_s": round(train_seconds, 1),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / max(train_seconds, 1e-9), 1),
        "seed": cfg.train.seed,
    }
    if before and after:
        summary.update(
            {
                "accuracy_before": before["eval/accuracy"],
                "accuracy_after": after["eval/accuracy"],
                "accuracy_gain_points": round(
                    100 * (after["eval/accuracy"] - before["eval/accuracy"]), 1
                ),
                "eval_prompts": len(run.eval_rows),
            }
        )
    if cfg.train.save_final:
        final = run.run_dir / "final"
        run.model.save_pretrained(final)
        run.tokenizer.save_pretrained(final)
        summary["final_model"] = str(final)
    if cfg.log.plot:
        plot_curves(log.history, run.run_dir / "curves.png")
        summary["plot"] = str(run.run_dir / "curves.png")
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
