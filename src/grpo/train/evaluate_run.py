"""A training run's held-out evaluation (each rank decodes its share) and its samples.jsonl
(every rank's first completions, gathered in rank order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpo.train.distributed import all_gather_objects, all_reduce_floats
from grpo.train.evaluate import evaluate_accuracy
from grpo.train.experience import Experience, sample_records

if TYPE_CHECKING:
    from grpo.train.setup import Run


def log_samples(run: Run, exp: Experience, step: int) -> None:
    """samples.jsonl: the first completions of every rank's share, ``log.samples_per_step`` in
    all, in rank order."""
    k, world = run.cfg.log.samples_per_step, run.world
    mine = sample_records(run, exp, -(-k // world.world_size))
    for record in mine:
        record["rank"] = world.rank
    rows = [r for part in all_gather_objects(world, mine) for r in part][:k]
    run.log.samples(step, rows)


def evaluate(run: Run) -> dict[str, float]:
    """Greedy accuracy on the held-out prompts (empty when there are none); each rank decodes
    a contiguous share of them with its own engine."""
    if not run.eval_rows:
        return {}
    cfg, world = run.cfg, run.world
    n = len(run.eval_rows)
    lo, hi = n * world.rank // world.world_size, n * (world.rank + 1) // world.world_size
    counts = [0.0, 0.0, 0.0]  # correct, prompts, completion tokens
    if hi > lo:
        result = evaluate_accuracy(
            run.engine,
            run.eval_prompt_ids[lo:hi],
            run.eval_rows[lo:hi],
            prompt_column=cfg.data.prompt_column,
            max_new_tokens=cfg.train.eval_max_new_tokens or cfg.rollout.max_new_tokens,
            stop=tuple(cfg.rollout.stop),
        )
        m = hi - lo
        counts = [result.accuracy * m, float(m), result.mean_completion_tokens * m]
    correct, prompts, tokens = all_reduce_floats(world, counts)
    return {"eval/accuracy": correct / prompts, "eval/completion_len": tokens / prompts}
