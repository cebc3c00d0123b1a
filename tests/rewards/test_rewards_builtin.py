from collections.abc import Callable
from typing import Any

import pytest

from grpo.rewards.builtin import BUILTIN_REWARDS, accuracy, format_reward, reasoning_length


def _one(fn: Callable[..., list[float | None]], completion: str, **columns: Any) -> float | None:
    """Score a batch of one completion."""
    return fn(["q"], [completion], **{k: [v] for k, v in columns.items()})[0]


ACCURACY_CASES = [
    ("<answer>18</answer>", "18", 1.0),
    ("<think>2*9</think><answer> $18.00 </answer>", "18", 1.0),
    ("18", "18.0", 1.0),
    ("The answer is 17", "17", 1.0),
    ("The answer is 17", "18", 0.0),
    ("I computed 1,600 widgets", "1600", 1.0),
    ("#### 0.75", "3/4", 1.0),
    ("<answer>-4</answer>", "4", 0.0),
    ("no number at all", "5", 0.0),  # nothing extractable: the model failed, score 0
    ("<answer>B</answer> 5", "5", 0.0),  # the answer tag decides, not the later number
    # Tolerance is relative 1e-6: 7 significant digits of 1/3 pass, 4 do not.
    ("<answer>0.3333333</answer>", "1/3", 1.0),
    ("<answer>0.3333</answer>", "1/3", 0.0),
    ("<answer>1000002</answer>", "1000000", 0.0),
    # Gold answers of other types.
    ("<answer>1600</answer>", 1600, 1.0),
    ("<answer>2.5</answer>", 2.5, 1.0),
    # A gold answer that cannot be read is the data's fault: None, not 0.
    ("<answer>5</answer>", "five", None),
    ("<answer>5</answer>", None, None),
    ("<answer>1</answer>", True, None),
    ("<answer>5</answer>", float("nan"), None),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), ACCURACY_CASES)
def test_accuracy(completion: str, gold: object, expected: float | None) -> None:
    assert _one(accuracy, completion, answer=gold) == expected


def test_accuracy_chat_completions_and_batch() -> None:
    completions = [
        [{"role": "assistant", "content": "<answer>3</answer>"}],
        [{"role": "assistant", "content": "<answer>4</answer>"}],
    ]
    assert accuracy(["q", "q"], completions, answer=["3", "3"], extra=[1, 2]) == [1.0, 0.0]


def test_accuracy_misaligned_answer_column() -> None:
    with pytest.raises(ValueError, match=r"accuracy: got 2 completions but 1 values"):
        accuracy(["q", "q"], ["1", "2"], answer=["1"])


FORMAT_CASES = [
    ("<think>r</think><answer>5</answer>", 1.0),
    ("intro <think>\nr\n</think>\n\n<answer> 5 </answer> trailing", 1.0),
    ("<think></think><answer>5</answer>", 1.0),  # empty think is allowed
    ("<answer>5</answer><think>r</think>", 0.5),  # both well formed, wrong order
    ("<think>r <answer>5</answer></think>", 0.5),  # answer nested in think
    ("<think>r</think>", 0.5),
    ("<answer>5</answer>", 0.5),
    ("<think>r</think><answer>   </answer>", 0.5),  # empty answer is not well formed
    ("<think>a</think><think>b</think><answer>5</answer>", 0.5),  # duplicated think
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.5),  # duplicated answer
    ("<think>a</think><think>b</think><answer>1</answer><answer>2</answer>", 0.0),
    ("</think>r<think><answer>5</answer>", 0.5),  # think closed before it opens
    ("<think>r</think><answer>5", 0.5),  # answer never closed
    ("<think>r<answer>5", 0.0),
    ("<THINK>r</THINK><ANSWER>5</ANSWER>", 0.0),  # tags are case-sensitive
    ("plain 5", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format_reward(completion: str, expected: float) -> None:
    assert _one(format_reward, completion) == expected


def test_format_reward_chat_completion() -> None:
    completion = [{"role": "assistant", "content": "<think>r</think><answer>5</answer>"}]
    assert format_reward([[{"role": "user", "content": "q"}]], [completion]) == [1.0]


REASONING_CASES = [
    ("<think>abcde</think><answer>1</answer>", 10, 0.5),
    ("<think>\n  abcde \n</think><answer>1</answer>", 10, 0.5),  # whitespace does not count
    ("<think>" + "x" * 20 + "</think><answer>1</answer>", 10, 1.0),  # capped at 1
    ("<think>" + "x" * 250 + "</think><answer>1</answer>", 1000, 0.25),
    ("<think></think><answer>1</answer>", 10, 0.0),
    ("<think>abcde</think>", 10, 0.0),  # format only half right: no length reward
    ("<think>abcde</think><answer></answer>", 10, 0.0),
    ("<answer>1</answer><think>abcde</think>", 10, 0.0),
]


@pytest.mark.parametrize(("completion", "target", "expected"), REASONING_CASES)
def test_reasoning_length(completion: str, target: int, expected: float) -> None:
    assert reasoning_length(["q"], [completion], target_chars=target) == [expected]


def test_reasoning_length_default_target_is_1000_chars() -> None:
    completion = "<think>" + "y" * 100 + "</think><answer>1</answer>"
    assert reasoning_length(["q"], [completion]) == [0.1]


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_reasoning_length_rejects_bad_target(bad: object) -> None:
    with pytest.raises(ValueError, match="reasoning_length: target_chars must be a positive"):
        reasoning_length(["q"], ["x"], target_chars=bad)


def test_registry() -> None:
    from grpo.rewards import CodeExecution, MathEquivalence, RewardModel
    from grpo.rewards.group_rewards import self_consistency
    from grpo.rewards.overlong import soft_overlong_punishment
    from grpo.rewards.step_rewards import correct_steps

    assert {
        "accuracy": accuracy,
        "format": format_reward,
        "reasoning_length": reasoning_length,
        "math": MathEquivalence,
        "code": CodeExecution,
        "reward_model": RewardModel,
        "self_consistency": self_consistency,
        "soft_overlong": soft_overlong_punishment,
        "correct_steps": correct_steps,
    } == BUILTIN_REWARDS
