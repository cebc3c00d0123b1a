"""The policy update: micro-batches, the global loss normaliser, mu optimizer steps.

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
from grpo.core import LossStats, grpo_loss, loss_normalizer, truncated_is_weights
from grpo.train.batch import RolloutBatch
from grpo.train.distributed import SINGLE, World, all_reduce, all_reduce_floats
from grpo.train.logprob_pass import completion_logprobs


def micro_plan(run: Any, batch: RolloutBatch) -> list[torch.Tensor]:
    t = run.cfg.train
    return batch.plan(max_rows=t.micro_batch_size, max_tokens=t.micro_batch_tokens)


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
    """[B, T] log-probs of the completion tokens under ``model``, micro-batch by micro-batch."""
    world: World = getattr(run, "world", SINGLE)
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    plan = micro_plan(run, batch)
    fillers = padded(world, len(plan))  # agreed before any pass: the passes are collectives
    kw = dict(autocast_dtype=run.compute_dtype, temperature=run.cfg.rollout.temperature)
    for idx in plan:
        logp, _ = completion_logprobs(model, batch.rows(idx), **kw)
        out[idx, : logp.shape[1]] = logp.cpu()
    for _ in range(fillers):
        completion_logprobs(model, filler(batch), **kw)
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
    normalizer = global_normalizer(
        world, a.loss_aggregation, batch, cfg.rollout.max_new_tokens, len(micro)
    )
    real = len(micro)
    micro = micro + [filler(batch)] * padded(world, real)
    params = [p for p in run.model.parameters() if p.requires_grad]
    device = next(iter(params)).device
    out: dict[str, float] = {}
    # entropy sum, its token count, TIS weight sum, capped-token count: summed over ranks
    extra = torch.zeros(4, dtype=torch.float64)
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
                extra[2] += float((weights * mask).sum())
                extra[3] += float(((weights >= a.tis_cap) & mask.bool()).sum())
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
            if k >= real:
                continue  # a filler pass: nothing to count
            stats = stats + mb_stats
            if entropy is not None:
                extra[0] += float((entropy * mask).sum())
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
    ent_sum, ent_tokens, tis_sum, tis_capped = all_reduce(world, extra.to(device)).tolist()
    out["entropy"] = ent_sum / max(ent_tokens, 1.0)
    if a.tis_cap is not None:
        n = max(float(batch.completion_mask.sum()) * a.num_iterations, 1.0)
        n = max(all_reduce_floats(world, [n])[0], 1.0)
        out["tis/weight_mean"] = tis_sum / n
        out["tis/capped_frac"] = tis_capped / n
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (the grad norm of sharded parameters) as a plain tensor."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t
