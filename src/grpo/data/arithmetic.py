"""The built-in verifiable task: chains of additions and subtractions.

A problem starts from a number up to 99 and adds or subtracts two or three single-digit
numbers, ``Q: 47+8-5+9``. The expected completion works left to right inside ``<think>`` and
gives the result inside ``<answer>``::

    <think>47+8=55 55-5=50 50+9=59</think><answer>59</answer>

Each step is easy for a small model to learn; doing all of them at once, without writing the
intermediate results, is not.

Every problem belongs to exactly one split, decided by a hash of its text, so the problems
used for the supervised warm-up, for RL prompts and for held-out evaluation never overlap,
whatever seed or count a caller asks for.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Split = Literal["warmup", "rl", "eval"]

# Hash buckets out of 100: a problem's split depends on its text alone.
_SPLIT_BUCKETS: dict[str, range] = {
    "warmup": range(0, 60),
    "rl": range(60, 90),
    "eval": range(90, 100),
}
_SEED_OFFSET: dict[str, int] = {"warmup": 0, "rl": 1_000_003, "eval": 2_000_003}

PROMPT_PREFIX = "Q: "
PROMPT_SUFFIX = "\n"


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: the operands and operators, evaluated left to right."""

    numbers: tuple[int, ...]
    ops: tuple[str, ...]  # "+" or "-", len(ops) == len(numbers) - 1

    @property
    def expression(self) -> str:
        parts = [str(self.numbers[0])]
        for op, n in zip(self.ops, self.numbers[1:], strict=True):
            parts.append(f"{op}{n}")
        return "".join(parts)

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX}{self.expression}{PROMPT_SUFFIX}"

    def steps(self) -> list[tuple[int, str, int, int]]:
        """(left, op, right, result) for each step, left to right."""
        out = []
        acc = self.numbers[0]
        for op, n in zip(self.ops, self.numbers[1:], strict=True):
            res = acc + n if op == "+" else acc - n
            out.append((acc, op, n, res))
            acc = res
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]

    def worked_completion(self) -> str:
        """The completion that shows its working (the target behaviour)."""
        work = " ".join(f"{a}{op}{b}={r}" for a, op, b, r in self.steps())
        return f"<think>{work}</think><answer>{self.answer}</answer>"

    def direct_completion(self) -> str:
        """A completion that states the result with no working."""
        return f"<answer>{self.answer}</answer>"


def split_of(expression: str) -> Split:
    """The split a problem belongs to, from a stable hash of its text."""
    bucket = int(hashlib.sha256(expression.encode()).hexdigest(), 16) % 100
    for name, buckets in _SPLIT_BUCKETS.items():
        if bucket in buckets:
            return name  # type: ignore[return-value]
    raise AssertionError("buckets cover 0..99")


def _random_problem(
    rng: random.Random, min_terms: int, max_terms: int, first_max: int, operand_max: int
) -> ArithmeticProblem:
    """First number in 1..first_max, the others in 1..operand_max; a subtraction that would
    go below zero becomes an addition, so every intermediate result is non-negative."""
    n_terms = rng.randint(min_terms, max_terms)
    return random_chain(rng, n_terms, (1, first_max), (1, operand_max))


def random_chain(
    rng: random.Random, n_terms: int, first: tuple[int, int], operand: tuple[int, int]
) -> ArithmeticProblem:
    """A chain of ``n_terms`` numbers, the first drawn in ``first`` (inclusive bounds), the
    others in ``operand``, each joined by a random + or -; a subtraction that would go below
    zero becomes an addition. The draws (first number, then an operator and a number per
    term) are the generators' contract: the shipped models' splits depend on them."""
    numbers = [rng.randint(*first)]
    ops: list[str] = []
    acc = numbers[0]
    for _ in range(n_terms - 1):
        op = rng.choice("+-")
        n = rng.randint(*operand)
        if op == "-" and n > acc:
            op = "+"
        acc = acc + n if op == "+" else acc - n
        numbers.append(n)
        ops.append(op)
    return ArithmeticProblem(tuple(numbers), tuple(ops))


def generate_problems(
    split: Split,
    count: int,
    *,
    seed: int = 0,
    min_terms: int = 3,
    max_terms: int = 4,
    first_max: int = 99,
    operand_max: int = 9,
) -> list[ArithmeticProblem]:
    """``count`` distinct problems of ``split``, reproducible from ``seed``."""
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_BUCKETS)}")
    rng = random.Random(seed * 7919 + _SEED_OFFSET[split])
    return draw_distinct(
        split, count, lambda: _random_problem(rng, min_terms, max_terms, first_max, operand_max)
    )


def draw_distinct(
    split: Split, count: int, draw: Callable[[], ArithmeticProblem]
) -> list[ArithmeticProblem]:
    """``count`` distinct problems of ``split`` from repeated ``draw()`` calls: a draw whose
    text was seen, or that hashes to another split, is skipped."""
    seen: set[str] = set()
    out: list[ArithmeticProblem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 1000 * count + 10_000:
            raise RuntimeError(f"could not draw {count} distinct {split} problems")
        p = draw()
        expr = p.expression
        if expr in seen or split_of(expr) != split:
            continue
        seen.add(expr)
        out.append(p)
    return out


def problem_rows(problems: list[ArithmeticProblem]) -> list[dict[str, str]]:
    """Rows in the trainer's dataset format: a ``prompt`` and the gold ``answer`` column."""
    return [{"prompt": p.prompt, "answer": str(p.answer)} for p in problems]
