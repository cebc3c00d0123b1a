"""The multistep task (grpo.data.multistep): problems, splits, worked answers, its rewards."""

from __future__ import annotations

import random

import pytest

from grpo.data.arithmetic import ArithmeticProblem, split_of
from grpo.data.multistep import generate_problems, random_problem
from grpo.rewards.builtin import accuracy, format_reward
from grpo.train.task_data import load_rows


def test_problems_have_two_digit_operands_three_or_four_steps_and_no_negative_totals():
    rng = random.Random(0)
    steps_seen = set()
    for _ in range(500):
        p = random_problem(rng)
        assert all(10 <= n <= 99 for n in p.numbers)
        assert len(p.ops) in (3, 4)
        steps_seen.add(len(p.ops))
        assert all(result >= 0 for _, _, _, result in p.steps())
    assert steps_seen == {3, 4}


def test_worked_completion_by_hand():
    # 47+38=85, 85-25=60, 60+19=79: a carry, a borrow, a carry
    p = ArithmeticProblem((47, 38, 25, 19), ("+", "-", "+"))
    assert p.prompt == "Q: 47+38-25+19\n"
    assert p.answer == 79
    assert p.worked_completion() == "<think>47+38=85 85-25=60 60+19=79</think><answer>79</answer>"
    # four steps into three digits: 96+87=183, 183+55=238, 238-99=139, 139+12=151
    q = ArithmeticProblem((96, 87, 55, 99, 12), ("+", "+", "-", "+"))
    assert q.answer == 151
    assert q.worked_completion().startswith("<think>96+87=183 183+55=238 238-99=139 139+12=151")


def test_splits_are_disjoint_and_each_problem_is_in_its_split():
    warm = generate_problems("warmup", 600)
    rl = generate_problems("rl", 300)
    ev = generate_problems("eval", 200)
    texts = [{p.expression for p in s} for s in (warm, rl, ev)]
    assert [len(t) for t in texts] == [600, 300, 200]  # distinct within a split
    assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]
    for name, problems in (("warmup", warm), ("rl", rl), ("eval", ev)):
        assert all(split_of(p.expression) == name for p in problems)
    # other seeds draw other problems, still inside their split
    rl1 = generate_problems("rl", 300, seed=1)
    assert {p.expression for p in rl1} != texts[1]
    assert not {p.expression for p in rl1} & texts[2]


def test_generation_is_reproducible_and_rejects_bad_arguments():
    assert generate_problems("eval", 20) == generate_problems("eval", 20)
    with pytest.raises(ValueError, match="unknown split"):
        generate_problems("test", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_terms"):
        generate_problems("eval", 1, min_terms=5, max_terms=4)


def test_rows_from_load_rows_and_the_builtin_rewards_score_them():
    train, evals = load_rows(
        task="multistep",
        train_path=None,
        eval_path=None,
        split="train",
        prompt_column="prompt",
        num_train_prompts=50,
        num_eval_prompts=20,
        seed=3,
        required_columns=["answer"],
    )
    assert len(train) == 50 and len(evals) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    row = evals[0]
    assert row["prompt"].startswith("Q: ") and row["prompt"].endswith("\n")
    expr = row["prompt"][3:-1]
    assert split_of(expr) == "eval"
    assert int(row["answer"]) == eval(expr)  # left to right, + and - only: Python agrees

    # hand-worked: right answer with working, one slip (85-25=50) carried to the end, no tags
    gold = ["79"] * 3
    right = "<think>47+38=85 85-25=60 60+19=79</think><answer>79</answer>"
    slip = "<think>47+38=85 85-25=50 50+19=69</think><answer>69</answer>"
    bare = "79"
    prompts = ["Q: 47+38-25+19\n"] * 3
    assert accuracy(prompts, [right, slip, bare], answer=gold) == [1.0, 0.0, 1.0]
    assert format_reward(prompts, [right, slip, bare]) == [1.0, 1.0, 0.0]
