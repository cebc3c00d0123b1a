"""The second built-in task: longer chains of two-digit additions and subtractions.

A problem starts from a two-digit number and adds or subtracts three or four more two-digit
numbers, ``Q: 47+38-25+19``. The expected completion has the same layout as the arithmetic
task's, one step per intermediate result::

    <think>47+38=85 85-25=60 60+19=79</think><answer>79</answer>

Unlike the arithmetic task, where each step adds a single digit, every step here may carry or
borrow across two digits and the running total reaches three digits, and one slip spoils
the answer. The shipped model for this task (``builtin:tiny-multistep``) always writes the
working out, but its warm-up data dropped the carry of most two-digit additions that carry
(scripts/make_multistep_model.py): greedy decoding drops it every time, sampling sometimes
carries, and what RL can improve is how often it does.

Problems are split by a hash of their text into the same three disjoint splits as the
arithmetic task (warm-up, RL prompts, held-out evaluation); see :func:`split_of`.
"""

from __future__ import annotations

import random

from grpo.data.arithmetic import ArithmeticProblem, Split, draw_distinct, random_chain

__all__ = ["MIN_TERMS", "MAX_TERMS", "generate_problems", "random_problem"]

MIN_TERMS = 4  # three steps
MAX_TERMS = 5  # four steps
OPERAND_MIN = 10
OPERAND_MAX = 99
# Seed streams per split, apart from the arithmetic task's, so the two tasks' draws are
# unrelated.
_SEED_OFFSET: dict[str, int] = {"warmup": 31_337, "rl": 1_031_339, "eval": 2_031_341}


def random_problem(
    rng: random.Random, min_terms: int = MIN_TERMS, max_terms: int = MAX_TERMS
) -> ArithmeticProblem:
    """Every number in 10..99; a subtraction that would go below zero becomes an addition, so
    every intermediate result is non-negative (at most 99 * max_terms)."""
    n_terms = rng.randint(min_terms, max_terms)
    bounds = (OPERAND_MIN, OPERAND_MAX)
    return random_chain(rng, n_terms, bounds, bounds)


def generate_problems(
    split: Split,
    count: int,
    *,
    seed: int = 0,
    min_terms: int = MIN_TERMS,
    max_terms: int = MAX_TERMS,
) -> list[ArithmeticProblem]:
    """``count`` distinct problems of ``split``, reproducible from ``seed``."""
    if split not in _SEED_OFFSET:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SEED_OFFSET)}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
    rng = random.Random(seed * 7919 + _SEED_OFFSET[split])
    return draw_distinct(split, count, lambda: random_problem(rng, min_terms, max_terms))
