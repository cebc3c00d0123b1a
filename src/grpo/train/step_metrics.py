"""The metrics of one step, describing the whole batch (every rank's share of it).

Per-completion values (rewards, lengths, truncation, zero-variance groups) are gathered from
every rank and reduced here exactly as one process would reduce them; the loss statistics
arrive already summed over ranks from ``train/update.py``. Times are the slowest rank's (the
step waits for it), token counts the sum.
"""

from __future__ import annotations

import torch

from grpo.rewards import RewardScores
from grpo.train.distributed import World, all_gather_objects, all_reduce_floats
from grpo.train.experience import Experience


def gathered_scores(world: World, scores: RewardScores) -> RewardScores:
    """The reward scores of the whole batch, in rank order."""
    if not world.distributed:
        return scores
    parts = all_gather_objects(world, (scores.total, scores.per_function, scores.errors))
    errors: dict[str, int] = {}
    for _, _, errs in parts:
        for name, count in errs.items():
            errors[name] = errors.get(name, 0) + count
    return RewardScores(
        total=torch.cat([p[0] for p in parts]),
        per_function={k: torch.cat([p[1][k] for p in parts]) for k in scores.per_function},
        errors=errors,
        extra=scores.extra,  # a function's own batch metrics are rank 0's
    )


def step_metrics(
    world: World,
    exp: Experience,
    update: dict[str, float],
    times: dict[str, float],
    step_seconds: float,
    lr: float,
    beta: float,
) -> dict[str, float]:
    """Every metric of metrics.jsonl for one step."""
    lengths = torch.tensor([len(c.token_ids) for c in exp.sampled.completions], dtype=torch.float64)
    groups = float(len(exp.sampled.row_ids))
    m = exp.metrics
    rows_sum, len_sum, truncated, zero_std, groups, generated, kl_pen, consumed, kept = (
        all_reduce_floats(
            world,
            [
                float(len(lengths)),
                float(lengths.sum()),
                float(exp.truncated.sum()),
                exp.advantage.frac_zero_std * groups,
                groups,
                float(exp.generated_tokens),
                m.get("kl_reward_penalty", 0.0) * len(lengths),
                m.get("dynamic_sampling/prompts_consumed", 0.0),
                m.get("dynamic_sampling/groups_kept", 0.0),
            ],
        )
    )
    phases = sorted(times)
    slowest = all_reduce_floats(
        world,
        [float(lengths.max()), m.get("dynamic_sampling/rounds", 0.0), step_seconds]
        + [times[k] for k in phases],
        "max",
    )
    longest, rounds, step_seconds = slowest[:3]
    times = dict(zip(phases, slowest[3:], strict=True))

    metrics: dict[str, float] = {
        **gathered_scores(world, exp.first_round.scores).metrics(),
        "frac_zero_std": zero_std / max(groups, 1.0),
    }
    if "dynamic_sampling/rounds" in m:
        metrics["dynamic_sampling/rounds"] = rounds
        metrics["dynamic_sampling/prompts_consumed"] = consumed
        metrics["dynamic_sampling/groups_kept"] = kept
    if "kl_reward_penalty" in m:
        metrics["kl_reward_penalty"] = kl_pen / max(rows_sum, 1.0)
    metrics.update(
        {
            **update,
            "beta": beta,
            "lr": lr,
            "completion_len/mean": len_sum / max(rows_sum, 1.0),
            "completion_len/max": longest,
            "truncated_frac": truncated / max(rows_sum, 1.0),
            "tokens": generated,
            "tokens_per_s": generated / step_seconds,
            "generate_tokens_per_s": generated / max(times.get("time/generate", 0.0), 1e-9),
            **times,
            "time/step": step_seconds,
        }
    )
    return metrics
