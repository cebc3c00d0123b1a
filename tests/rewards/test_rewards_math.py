"""The `math` reward: math-verify equivalence, a MATH-style table and GSM8K gold labels."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpo.rewards import RewardFunction, score_completions
from grpo.rewards.builtin import accuracy
from grpo.rewards.math_reward import MathEquivalence

pytest.importorskip("math_verify")

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


@pytest.fixture(scope="module")
def checker() -> Iterator[MathEquivalence]:
    reward = MathEquivalence(timeout_s=5.0, workers=2)
    yield reward
    reward.close()


# (completion, gold, expected)
MATH_TABLE = [
    # fractions
    (r"So the probability is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", 1.0),
    (r"The answer is \boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"The answer is \boxed{\dfrac{3}{4}}", r"0.75", 1.0),
    (r"Thus $\boxed{\tfrac{6}{8}}$", r"\frac34", 1.0),
    (r"<answer>\frac{2}{3}</answer>", r"\frac{2}{3}", 1.0),
    (r"<answer>2/3</answer>", r"\frac{2}{3}", 1.0),
    (r"The answer is \boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
    (r"The answer is \boxed{0.333}", r"\frac{1}{3}", 0.0),
    # square roots
    (r"We get $\boxed{2\sqrt{2}}$", r"\sqrt{8}", 1.0),
    (r"Hence $\boxed{\sqrt{2}/2}$", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"Hence $\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"Hence $\boxed{\sqrt{3}}$", r"\sqrt{2}", 0.0),
    # percentages
    (r"The discount is \boxed{25\%}", r"25\%", 1.0),
    (r"The discount is \boxed{0.25}", r"25\%", 1.0),
    (r"The discount is \boxed{20\%}", r"25\%", 0.0),
    # decimals
    (r"The total is \boxed{3.50}", r"3.5", 1.0),
    (r"The total is \boxed{7/2}", r"3.5", 1.0),
    (r"The total is \boxed{3.05}", r"3.5", 0.0),
    # intervals
    (r"The solution set is $\boxed{[1, 2)}$", r"[1,2)", 1.0),
    (r"So $x \in \boxed{(-\infty, 3]}$", r"(-\infty,3]", 1.0),
    (r"The solution set is $\boxed{(1, 2]}$", r"[1,2]", 0.0),
    (r"The solution set is $\boxed{(1, 2)}$", r"[1,2)", 0.0),
    # sets
    (r"The roots are $\boxed{\{3, 1, 2\}}$", r"\{1,2,3\}", 1.0),
    (r"The roots are $\boxed{\{1, 2\}}$", r"\{1,2,3\}", 0.0),
    # LaTeX spacing and decoration
    (r"The answer is $\boxed{\frac{ 1 }{ 2 }}$", r"\frac{1}{2}", 1.0),
    (r"The answer is $\boxed{1\,000}$", r"1000", 1.0),
    (r"The answer is $\boxed{\left( 3, 4 \right)}$", r"(3,4)", 1.0),
    (r"So $\boxed{x = 5}$", r"5", 1.0),
    (r"The area is \boxed{12 \text{ cm}^2}", r"12", 1.0),
    # plain text and the last expression
    (r"First I tried 4, which failed. The final answer is 6.", r"6", 1.0),
    (r"I am not sure.", r"6", 0.0),
    # symbolic expressions
    (r"Expanding gives $\boxed{x^2 + 2x + 1}$", r"(x+1)^2", 1.0),
    (r"Expanding gives $\boxed{x^2 + 1}$", r"(x+1)^2", 0.0),
]


def test_math_style_table(checker: MathEquivalence) -> None:
    completions = [c for c, _, _ in MATH_TABLE]
    golds = [g for _, g, _ in MATH_TABLE]
    expected = [e for _, _, e in MATH_TABLE]
    scores = checker(["q"] * len(MATH_TABLE), completions, golds)
    wrong = [(c, g, e, s) for (c, g, e), s in zip(MATH_TABLE, scores, strict=True) if s != e]
    assert not wrong, f"{len(wrong)} of {len(MATH_TABLE)} disagree with the table: {wrong}"
    # Both kinds of pair are represented, and the table covers what the issue lists.
    assert expected.count(1.0) >= 20 and expected.count(0.0) >= 10


def test_answer_tags_win_over_the_rest(checker: MathEquivalence) -> None:
    completions = [
        r"<think>maybe \boxed{3}</think><answer>7</answer>",
        "<answer>18 dollars</answer>",  # read as text: units do not spoil the number
        r"<answer>\frac12</answer>",  # read as LaTeX: no delimiters needed
        "<answer></answer> The answer is 4",  # an empty tag does not count
        [{"role": "assistant", "content": r"\boxed{9}"}],  # chat-message completions
    ]
    assert checker(["q"] * 5, completions, ["7", "18", "0.5", "4", 9]) == [1.0] * 5


def test_unreadable_gold_is_none_and_no_answer_is_zero(checker: MathEquivalence) -> None:
    scores = checker(["q"] * 3, [r"\boxed{1}", "no answer here", r"\boxed{1}"], ["", "5", None])
    assert scores == [None, 0.0, None]
    metrics = checker.batch_metrics()
    assert set(metrics) == {"no_answer_frac", "timeout_frac"}


def test_gsm8k_gold_labels() -> None:
    """Reference solutions and their answers, boxed or tagged, match the gold answer; the same
    answers off by one do not. `accuracy` (the numeric checker) must agree as well."""
    if not GSM8K_TEST.exists():
        pytest.skip(f"{GSM8K_TEST} is not present")
    from grpo.data.gsm8k import parse_gsm8k_row

    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    parsed = [parse_gsm8k_row(r) for r in rows]
    golds = [answer for _, answer, _ in parsed]

    def off_by_one(gold: str) -> str:
        value = float(gold)
        return str(int(value) + 1) if value.is_integer() else str(value + 1)

    completions = (
        [solution for _, _, solution in parsed]
        + [f"Working...\nSo the answer is $\\boxed{{{g}}}$." for g in golds]
        + [f"<think>...</think> <answer>{g}</answer>" for g in golds]
        + [f"... so the final answer is {off_by_one(g)}" for g in golds]
        + [f"<answer>{off_by_one(g)}</answer>" for g in golds]
    )
    gold_column = golds * 5
    expected = [1.0] * (3 * len(golds)) + [0.0] * (2 * len(golds))

    checker = MathEquivalence(timeout_s=5.0, workers=2)
    try:
        start = time.perf_counter()
        math_scores = checker(["q"] * len(completions), completions, gold_column)
        seconds = time.perf_counter() - start
    finally:
        checker.close()
    numeric_scores = accuracy(["q"] * len(completions), completions, gold_column)

    def disagreements(scores: list[float | None]) -> list[tuple[str, str]]:
        return [
            (completions[i][-80:], gold_column[i])
            for i, (s, e) in enumerate(zip(scores, expected, strict=True))
            if s != e
        ]

    # Measured on the 1,319-row test set: 6,595 of 6,595 agree for both, in about 4 s.
    assert disagreements(math_scores) == []
    assert disagreements(numeric_scores) == []
    assert seconds < 60


def test_workers_zero_checks_in_process() -> None:
    reward = MathEquivalence(workers=0)
    assert reward(["q", "q"], [r"\boxed{\frac{2}{4}}", r"\boxed{3}"], ["0.5", "4"]) == [1.0, 0.0]


def test_pathological_answer_ends_in_time(checker: MathEquivalence) -> None:
    quick = MathEquivalence(timeout_s=1.0, workers=1)
    try:
        start = time.perf_counter()
        scores = quick(["q", "q"], [r"\boxed{10^{10^{10^{10^{10}}}}}", r"\boxed{2}"], ["3", "2"])
        assert time.perf_counter() - start < 10
        # Whether math-verify gave up (0.0) or the worker was killed (0.0, timeout counted),
        # the pathological answer is not correct and the next one is still checked.
        assert scores == [0.0, 1.0]
    finally:
        quick.close()


def test_timeout_kills_and_replaces_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker that never answers: the hard limit must end the wait and give 0.0.
    import grpo.rewards.math_reward as module

    reward = MathEquivalence(timeout_s=0.5, workers=1)
    monkeypatch.setattr(module, "_WORKER", Path(__file__).with_name("_hanging_worker.py"))
    try:
        start = time.perf_counter()
        assert reward(["q"], [r"\boxed{1}"], ["1"]) == [0.0]
        assert time.perf_counter() - start < 5
        assert reward.batch_metrics()["timeout_frac"] == 1.0
    finally:
        reward.close()


def test_builds_from_config_entry() -> None:
    rf = RewardFunction.from_spec("math", kwargs={"timeout_s": 2.0, "workers": 1})
    assert isinstance(rf.fn, MathEquivalence) and rf.fn.timeout_s == 2.0 and rf.kwargs == {}
    assert rf.required_columns() == {"answer"}
    try:
        scores = score_completions(
            [rf], ["q", "q"], [r"\boxed{50\%}", "x"], {"answer": ["0.5"] * 2}
        )
        assert scores.per_function["math"].tolist() == [1.0, 0.0]
        metrics = scores.metrics()
        assert metrics["rewards/math/no_answer_frac"] == 0.5
        assert metrics["rewards/math/timeout_frac"] == 0.0
    finally:
        rf.fn.close()


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"workers": -1}, {"memory_mb": 10}])
def test_bad_kwargs(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="math:"):
        MathEquivalence(**bad)
