"""The habit built into the multistep model's warm-up data (scripts/make_multistep_model.py):
two-digit additions that carry drop the carry with a given probability, and the working
stays consistent after a slip."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from grpo.data.arithmetic import ArithmeticProblem
from grpo.rewards.step_rewards import correct_steps

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_multistep_model.py"


@pytest.fixture(scope="module")
def warmup():
    spec = importlib.util.spec_from_file_location("make_multistep_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_slip_prone_steps_are_carrying_two_digit_additions(warmup):
    assert warmup.slip_prone(47, "+", 38)  # 7 + 8 carries
    assert not warmup.slip_prone(47, "+", 32)  # 7 + 2 does not
    assert not warmup.slip_prone(47, "-", 38)  # a borrow is never prone
    assert not warmup.slip_prone(147, "+", 38)  # three-digit running totals are written right


def test_full_slip_drops_every_prone_carry_and_chains_on_the_written_result(warmup):
    # 47+38 carries (prone): 75 instead of 85; 75-25 = 50; 50+19 = 69 (no carry: 0 + 9)
    problem = ArithmeticProblem((47, 38, 25, 19), ("+", "-", "+"))
    text = warmup.slipped_completion(problem, random.Random(0), slip=1.0)
    assert text == "<think>47+38=75 75-25=50 50+19=69</think><answer>69</answer>"
    # only the slipped step is wrong: 2 of 3 steps earn credit
    [share] = correct_steps([problem.prompt], [text])
    assert share == pytest.approx(2 / 3)


def test_no_slip_is_the_worked_completion(warmup):
    problem = ArithmeticProblem((58, 47, 76, 12), ("+", "+", "-"))
    assert warmup.slipped_completion(problem, random.Random(0), 0.0) == (
        problem.worked_completion()
    )
    # 58+47 slips to 95; 95+76 is prone too (5 + 6 carries) and slips to 161; 161-12 = 149
    slipped = warmup.slipped_completion(problem, random.Random(0), 1.0)
    assert slipped == "<think>58+47=95 95+76=161 161-12=149</think><answer>149</answer>"


def test_slip_rate_is_the_given_probability(warmup):
    problem = ArithmeticProblem((47, 38), ("+",))
    rng = random.Random(1)
    slips = sum(
        warmup.slipped_completion(problem, rng, 0.6).endswith(">75</answer>") for _ in range(4000)
    )
    # binomial(4000, 0.6): std 31, so 4 std either side
    assert abs(slips - 2400) < 124
