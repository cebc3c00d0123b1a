"""Greedy accuracy and pass@k of a policy on prompt rows with a gold ``answer`` column."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpo.rewards import accuracy
from grpo.rollout.base import RolloutEngine, SamplingSettings


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):
    ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    accuracy: float  # greedy, or mean correctness of the samples when sampling
    pass_at_k: dict[int, float]
    num_prompts: int
    mean_completion_tokens: float
    completions: list[str]  # first completion of each prompt

    def as_metrics(self, prefix: str = "eval") -> dict[str, float]:
        out = {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/completion_len": self.mean_completion_tokens,
        }
        out.update({f"{prefix}/pass@{k}": v for k, v in self.pass_at_k.items()})
        return out


def evaluate_accuracy(
    engine: RolloutEngine,
    prompt_ids: Sequence[list[int]],
    rows: Sequence[dict[str, Any]],
    *,
    prompt_column: str = "prompt",
    max_new_tokens: int,
    samples: int = 1,
    ks: Sequence[int] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
) -> EvalResult:
    """``samples == 1``: greedy decoding. ``samples > 1``: that many sampled completions per
    prompt, scored for ``accuracy`` (their mean) and for pass@k for each k in ``ks``."""
    if any("answer" not in r for r in rows):
        raise ValueError("evaluation needs an 'answer' column in every row")
    greedy = samples == 1
    settings = SamplingSettings(
        n=samples,
        temperature=0.0 if greedy else temperature,
        top_p=1.0 if greedy else top_p,
        max_new_tokens=max_new_tokens,
        stop=stop,
        seed=seed,
    )
    groups = engine.generate(list(prompt_ids), settings)
    texts = [c.text for g in groups for c in g]
    prompts = [r[prompt_column] for r in rows for _ in range(samples)]
    answers = [r["answer"] for r in rows for _ in range(samples)]
    scores = accuracy(prompts, texts, answer=answers)
    correct = [s == 1.0 for s in scores]
    per_prompt = [sum(correct[i * samples : (i + 1) * samples]) for i in range(len(rows))]
    lengths = [len(c.token_ids) for g in groups for c in g]
    return EvalResult(
        accuracy=sum(correct) / max(1, len(correct)),
        pass_at_k={k: sum(pass_at_k(samples, c, k) for c in per_prompt) / len(rows) for k in ks},
        num_prompts=len(rows),
        mean_completion_tokens=sum(lengths) / max(1, len(lengths)),
        completions=[g[0].text for g in groups],
    )
