"""The reward both trainers get in the benchmark: one cheap, deterministic Python function.

It follows the contract both libraries share, ``fn(prompts, completions, **columns)``, so the
very same object is handed to TRL's ``GRPOTrainer(reward_funcs=...)`` and named in our config
as ``benchmarks/bench_reward.py:digit_fraction``. Its cost is a few microseconds a completion:
the benchmark times the trainers, not the reward.
"""

from __future__ import annotations


def digit_fraction(prompts: list, completions: list, **kwargs) -> list[float]:
    """The fraction of a completion's characters that are digits (0 for an empty one)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in map(_text, completions)]


def _text(completion) -> str:
    # TRL passes chat-format completions as [{"role": ..., "content": ...}]; ours are strings
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion
