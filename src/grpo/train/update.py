"""The policy update (and, for PPO, the critic's): micro-batches, the global loss normaliser,
mu optimizer steps.

This is the one place where the loss is reduced: the normaliser of the aggregation mode is
computed once from the whole batch (every micro-batch on every rank), each micro-batch adds
``sum(its terms) / normaliser`` to the gradient, and the loss statistics are summed over
micro-batches and ranks before they become means. So N ranks compute the gradient one process
computes on the same batch (DeepSeekMath eq. 3 reduced as documented in core/policy_loss.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from grpo import interrupt
from grpo.config import loss_settings, sampling_mask
from grpo.core import (
    LossStats,
    clipped_value_loss,
    explained_variance,
    loss_normalizer,
    masked_sums,
    policy_loss_fn,
    truncated_is_weights,
)
from grpo.train.batch import RolloutBatch
from grpo.train.critic import critic_values
from grpo.train.distributed import SINGLE, World, all_reduce, all_reduce_floats
from grpo.train.logprob_pass import completion_logprobs
from grpo.train.token_budget import auto_token_budget, balanced_rows


def micro_plan(run: Any, batch: RolloutBatch) -> list[torch.Tensor]:
    """Row indices of each forward/backward pass: at most ``train.micro_batch_size`` rows and,
    with a token budget, rows packed by length under it (auto: train/token_budget.py)."""
    t = run.cfg.train
    rows, tokens = t.micro_batch_size, t.micro_batch_tokens
    if tokens == "auto":
        width = batch.input_ids.shape[1]
        tokens = auto_token_budget(
            run.hf_model.config,
            getattr(run, "world", SINGLE).device(),
            run.free_memory,
            seq_len=width,
            checkpointing=run.cfg.model.gradient_checkpointing,
        )
        rows = min(rows, balanced_rows(batch.num_rows, width, tokens))
    return batch.plan(max_rows=rows, max_tokens=tokens)


def filler(batch: RolloutBatch) -> RolloutBatch:
    """A one-row micro-batch with nothing in the loss. Every rank must run as many forward (and
    backward) passes as the others, since each pass of a sharded model gathers parameters; a
    rank with fewer micro-batches runs these, which add exactly 0 to loss and gradient."""
    one = batch.rows(torch.tensor([0]))
    return replace(one, completion_mask=torch.zeros_like(one.completion_mask))


def padded(world: World, count: int) -> int:
    """How many filler passes this rank runs so that every rank runs the same number."""
    (most,) = all_reduce_floats(world, [float(count)], "max")
    return int(most) - count


@torch.no_grad()
def batch_logprobs(run: Any, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """[B, T] log-probs of the completion tokens under ``model``, micro-batch by micro-batch,
    over the sampler's kept set when the sampling mask is replayed (for the reference too: a
    reference equal to the policy then has KL exactly 0)."""
    world: World = getattr(run, "world", SINGLE)
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    plan = micro_plan(run, batch)
    fillers = padded(world, len(plan))  # agreed before any pass: the passes are collectives
    top_k, top_p = sampling_mask(run.cfg)
    kw = dict(
        autocast_dtype=run.compute_dtype,
        temperature=run.cfg.rollout.temperature,
        top_k=top_k,
        top_p=top_p,
    )
    for idx in plan:
        logp, _ = completion_logprobs(model, batch.rows(idx), **kw)
        out[idx, : logp.shape[1]] = logp.cpu()
    for _ in range(fillers):
        completion_logprobs(model, filler(batch), **kw)
    return out


@torch.no_grad()
def batch_values(run: Any, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """[B, T] critic values of the completion positions, micro-batch by micro-batch."""
    world: World = getattr(run, "world", SINGLE)
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    plan = micro_plan(run, batch)
    fillers = padded(world, len(plan))
    for idx in plan:
        v = critic_values(model, batch.rows(idx), autocast_dtype=run.compute_dtype)
        out[idx, : v.shape[1]] = v.cpu()
    for _ in range(fillers):
        critic_values(model, filler(batch), autocast_dtype=run.compute_dtype)
    return out


def global_normalizer(
    world: World, aggregation: str, batch: RolloutBatch, max_new_tokens: int, num_micro: int
) -> float:
    """The aggregation's normaliser over the whole batch: counts summed over every rank."""
    # rows with no token left in the loss (masked truncations) do not count
    sequences, tokens, micro = all_reduce_floats(
        world,
        [
            float((batch.completion_mask.sum(1) > 0).sum()),
            float(batch.completion_mask.sum()),
            float(num_micro),
        ],
    )
    return loss_normalizer(
        aggregation,
        num_sequences=int(sequences),
        num_tokens=int(tokens),
        max_completion_length=max_new_tokens,
        num_micro_batches=int(micro),
    )


# Autograd's mode is process-global: these two say they need it, so that a caller (a notebook
# cell under no_grad, an evaluation hook that left it off) cannot silently make backward fail.
@torch.enable_grad()
def update_policy(
    run: Any, micro: list[RolloutBatch], batch: RolloutBatch, beta: float
) -> dict[str, float]:
    """mu optimizer steps on one rollout batch; the loss normaliser is the whole batch's.

    With mu = 1 the old policy is the current one (ratio exactly 1, no extra pass). With
    mu > 1 the log-probs of the first pass, taken before any update, are the old log-probs of
    the later passes: same weights, same micro-batches, so no separate pass is needed.
    """
    cfg, a = run.cfg, run.cfg.algorithm
    world: World = getattr(run, "world", SINGLE)
    eps_low, eps_high, aggregation = loss_settings(a)
    loss_fn = policy_loss_fn(a.policy_loss)
    top_k, top_p = sampling_mask(cfg)
    max_new = cfg.rollout.max_new_tokens
    normalizer = global_normalizer(world, aggregation, batch, max_new, len(micro))
    real = len(micro)
    micro = micro + [filler(batch)] * padded(world, real)
    params = trained_parameters(run.optimizer)
    device = next(iter(params)).device
    out: dict[str, float] = {}
    # entropy sum, its token count, TIS weight sum, capped-token count, |logp - engine logp|
    # sum and its token count: summed over ranks
    extra = torch.zeros(6, dtype=torch.float64)
    bonus = a.entropy_coef > 0
    for iteration in range(a.num_iterations):
        stats = LossStats.zeros(device)
        for k, mb in enumerate(micro):
            if iteration == 0:
                interrupt.checkpoint()  # before the first optimizer step the weights are intact
            logp, entropy = completion_logprobs(
                run.model,
                mb,
                autocast_dtype=run.compute_dtype,
                with_entropy=iteration == 0,
                entropy_grad=bonus,  # the bonus needs the entropy's gradient in every pass
                temperature=cfg.rollout.temperature,
                top_k=top_k,
                top_p=top_p,
            )
            mask = mb.completion_mask.to(device)
            if iteration == 0 and mb.engine_logprobs is not None:
                # before any update: the trainer's log-probs of the weights that sampled
                gap = (logp.detach() - mb.engine_logprobs.to(device)).abs()
                extra[4] += float(torch.where(mask.bool(), gap, 0.0).sum())
                extra[5] += float(mask.sum())
            if iteration == 0 and a.num_iterations > 1:
                mb.old_logprobs = logp.detach()
            weights = None
            if a.tis_cap is not None:
                # the engine sampled with slightly different numerics than the trainer computes
                old = logp.detach() if iteration == 0 else mb.old_logprobs
                assert mb.engine_logprobs is not None
                weights = truncated_is_weights(old, mb.engine_logprobs.to(device), a.tis_cap, mask)
                extra[2] += float((weights * mask).sum())
                extra[3] += float(((weights >= a.tis_cap) & mask.bool()).sum())
            loss, mb_stats = loss_fn(
                logp,
                None if iteration == 0 else mb.old_logprobs,
                None if mb.ref_logprobs is None else mb.ref_logprobs.to(device),
                mb.advantages.to(device),
                mask,
                beta=beta,
                eps_low=eps_low,
                eps_high=eps_high,
                aggregation=aggregation,
                normalizer=normalizer,
                kl_estimator=a.kl_estimator,
                dual_clip_c=a.dual_clip_c,
                token_weights=weights,
                entropy=entropy if bonus else None,
                entropy_coef=a.entropy_coef,
            )
            loss.backward()
            if k >= real:
                continue  # a filler pass: nothing to count
            stats = stats + mb_stats
            if entropy is not None and iteration == 0:
                extra[0] += float((entropy.detach() * mask).sum())
                extra[1] += float(mask.sum())
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(params, max_norm))
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        summed = LossStats.from_tensor(all_reduce(world, stats.to_tensor()))
        if iteration == 0:
            out = {**summed.finalize(), "grad_norm": float(grad_norm)}
        elif iteration == a.num_iterations - 1:
            # the later passes are where the ratio moves away from 1 and clipping acts
            last = summed.finalize()
            out.update(
                {
                    f"last_iteration/{k}": v
                    for k, v in last.items()
                    if "clip" in k or k == "ratio_mean"
                }
            )
    ent_sum, ent_tokens, tis_sum, tis_capped, gap_sum, gap_tokens = all_reduce(
        world, extra.to(device)
    ).tolist()
    out["entropy"] = ent_sum / max(ent_tokens, 1.0)
    if gap_tokens > 0:
        # mean |log pi_trainer - log pi_engine| over the sampled tokens, before the update
        out["rollout/logprob_abs_diff"] = gap_sum / gap_tokens
    if a.tis_cap is not None:
        n = max(float(batch.completion_mask.sum()) * a.num_iterations, 1.0)
        n = max(all_reduce_floats(world, [n])[0], 1.0)
        out["tis/weight_mean"] = tis_sum / n
        out["tis/capped_frac"] = tis_capped / n
    return out


def trained_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters the optimizer steps, for clipping their gradients.

    Not ``model.parameters()``: after a no-grad forward of a sharded model (the old values,
    or the policy's log-probs for kl_in_reward) FSDP2 leaves the root's parameters unsharded
    until the next backward, and the module then lists those stand-ins, whose ``.grad`` stays
    None while the gradients land on the sharded parameters: the clip would skip them."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (the grad norm of sharded parameters) as a plain tensor."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


@torch.enable_grad()
def update_critic(
    run: Any, micro: list[RolloutBatch], batch: RolloutBatch, *, abortable: bool
) -> dict[str, float]:
    """mu optimizer steps of the critic on the batch's GAE returns (PPO's value loss, clipped
    around the values the advantages were computed with). The loss is a token mean over the
    whole batch: every micro-batch on every rank divides by the same token count.

    ``abortable``: no optimizer step of this RL step has happened yet (the policy is still
    in its warm-up), so a stop request may abort the step here, before the first one.
    """
    critic, a = run.critic, run.cfg.algorithm
    world: World = getattr(run, "world", SINGLE)
    assert batch.old_values is not None and batch.returns is not None
    mask = batch.completion_mask
    sums = all_reduce_floats(
        world,
        [
            *masked_sums(batch.old_values, mask),
            *masked_sums(batch.returns, mask),
            *masked_sums(batch.returns - batch.old_values, mask),
        ],
    )
    values_sums, return_sums, residual_sums = sums[0:3], sums[3:6], sums[6:9]
    tokens = max(values_sums[2], 1.0)
    real = len(micro)
    micro = micro + [filler(batch)] * padded(world, real)
    params = trained_parameters(critic.optimizer)
    device = params[0].device
    out: dict[str, float] = {}
    for iteration in range(a.num_iterations):
        # value loss, clipped tokens, squared error: summed over micro-batches and ranks
        acc = torch.zeros(3, dtype=torch.float64)
        for k, mb in enumerate(micro):
            if iteration == 0 and abortable:
                interrupt.checkpoint()
            assert mb.old_values is not None and mb.returns is not None
            values = critic_values(critic.model, mb, autocast_dtype=run.compute_dtype)
            loss, st = clipped_value_loss(
                values,
                mb.old_values.to(device),
                mb.returns.to(device),
                mb.completion_mask.to(device),
                clip=critic.value_clip,
                normalizer=tokens,
            )
            loss.backward()
            if k < real:
                acc += torch.tensor([st.loss, st.clipped_tokens, st.error_sum], dtype=torch.float64)
        max_norm = run.cfg.optim.max_grad_norm if run.cfg.optim.max_grad_norm > 0 else math.inf
        grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        critic.optimizer.step()
        critic.optimizer.zero_grad(set_to_none=True)
        loss_sum, clipped, err = all_reduce(world, acc.to(device)).tolist()
        if iteration == 0:
            out = {
                "critic/value_loss": loss_sum,
                "critic/vf_clipfrac": clipped / tokens,
                "critic/value_mse": err / tokens,
                "critic/grad_norm": grad_norm,
            }
    out["critic/values_mean"] = values_sums[0] / tokens
    out["critic/returns_mean"] = return_sums[0] / tokens
    out["critic/explained_var"] = explained_variance(tuple(residual_sums), tuple(return_sums))
    out["critic/lr"] = critic.optimizer.param_groups[0]["lr"]
    return out
