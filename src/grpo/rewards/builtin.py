"""Built-in reward functions.

Each follows the reward contract `fn(prompts, completions, **columns) -> list[float | None]`:
`prompts` and `completions` are aligned lists (strings or chat message lists), extra dataset
columns arrive as keyword lists aligned with them, and None means "cannot score this one". They
accept `**kwargs` so the trainer can pass every dataset column without knowing which each uses.

`math`, `code` and `reward_model` hold state (worker processes, a model), so they are classes:
`RewardFunction` builds them once with the config's kwargs, and the instance is the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from grpo.rewards.extract import completion_text, extract_number, parse_number
from grpo.rewards.group_rewards import self_consistency
from grpo.rewards.math_reward import MathEquivalence
from grpo.rewards.overlong import soft_overlong_punishment
from grpo.rewards.reward_model import RewardModel
from grpo.rewards.sandbox.code_reward import CodeExecution
from grpo.rewards.step_rewards import correct_steps

__all__ = ["BUILTIN_REWARDS", "accuracy", "format_reward", "reasoning_length"]

# Answers are compared as floats; the relative tolerance absorbs "0.1 + 0.2"-style float noise
# and "0.3333333" for 1/3 written to 7 places, without accepting real near-misses.
_REL_TOL = 1e-6
_ABS_TOL = 1e-9


def accuracy(
    prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold `answer` numerically, else 0.0.

    The completion's answer is found by `extract_number` (last `<answer>`, then `\\boxed{}`,
    `####`, "the answer is", then the last number). A completion with no readable number scores
    0.0: the model failed to answer. The gold answer (a number, or a string `parse_number`
    reads, such as "1,234" or "3/4") that cannot be read gives None for that row, because the
    fault is in the data, not the completion. Whole numbers must be equal exactly; otherwise
    equality is `math.isclose` with rel_tol=1e-6.
    """
    if len(answer) != len(completions):
        raise ValueError(
            f"accuracy: got {len(completions)} completions but {len(answer)} values in the "
            "'answer' column; they must be aligned one per completion"
        )
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_value = gold_number(gold)
        if gold_value is None:
            scores.append(None)
            continue
        predicted = extract_number(completion_text(completion))
        scores.append(1.0 if predicted is not None and _same(predicted, gold_value) else 0.0)
    return scores


def _same(predicted: float, gold: float) -> bool:
    # Whole numbers are compared exactly: with a relative tolerance, 1450001 would pass for a
    # gold answer of 1450000 (GSM8K has answers that large).
    if predicted.is_integer() and gold.is_integer():
        return predicted == gold
    return math.isclose(predicted, gold, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


def gold_number(gold: Any) -> float | None:
    """The gold answer as a float, or None when it cannot be read as a number."""
    # bool is an int subclass; True as a gold answer is a data error, not the number 1.
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int | float):
        return float(gold) if math.isfinite(gold) else None
    if isinstance(gold, str):
        return parse_number(gold)
    return None


def _tag_content(text: str, tag: str) -> tuple[int, int, str] | None:
    """(start of the opening tag, end of the closing tag, content) when `tag` is well formed.

    Well formed: `<tag>` occurs exactly once, `</tag>` occurs exactly once, and the opening tag
    comes first. Tags are matched exactly (lowercase, no attributes or spaces).
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    if text.count(opening) != 1 or text.count(closing) != 1:
        return None
    start = text.index(opening)
    end = text.index(closing)
    if end < start:
        return None
    return start, end + len(closing), text[start + len(opening) : end]


def _format_score(text: str) -> tuple[float, str | None]:
    """The format score of one text and, when it is 1.0, the think content."""
    think = _tag_content(text, "think")
    answer = _tag_content(text, "answer")
    if answer is not None and not answer[2].strip():
        answer = None
    if think is not None and answer is not None:
        # Both pairs must be in sequence: </think> before <answer>. Misordered or nested pairs
        # are each well formed, so they keep the half credit.
        if think[1] <= answer[0]:
            return 1.0, think[2]
        return 0.5, None
    if think is not None or answer is not None:
        return 0.5, None
    return 0.0, None


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Reward the `<think>...</think><answer>...</answer>` layout.

    Definitions (tags are matched exactly, case-sensitive, no attributes):

    - think is well formed when `<think>` and `</think>` each occur exactly once in the
      completion, in that order (the content may be empty);
    - answer is well formed when `<answer>` and `</answer>` each occur exactly once, in that
      order, and the content between them is not only whitespace.

    Score: 1.0 when both are well formed and `</think>` comes before `<answer>`; 0.5 when
    exactly one is well formed, or both are but out of order (answer first, or one inside the
    other); 0.0 otherwise. Text before, between and after the blocks is allowed.

    A chat template that opens `<think>` in the prompt (the model writes only `</think>`) gets
    at most 0.5 here: the opening tag is not in the completion.
    """
    return [_format_score(completion_text(c))[0] for c in completions]


def reasoning_length(
    prompts: list[Any], completions: list[Any], target_chars: int = 1000, **kwargs: Any
) -> list[float | None]:
    """min(len(think content) / target_chars, 1.0) when `format_reward` gives 1.0, else 0.0.

    The think content is stripped of surrounding whitespace before counting characters, so
    padding with blank lines earns nothing. Gating on the full format stops the model from
    earning length reward with a think block that never reaches an answer.
    """
    if isinstance(target_chars, bool) or not isinstance(target_chars, int) or target_chars <= 0:
        raise ValueError(
            f"reasoning_length: target_chars must be a positive integer, got {target_chars!r}"
        )
    scores: list[float | None] = []
    for completion in completions:
        score, think = _format_score(completion_text(completion))
        if score < 1.0 or think is None:
            scores.append(0.0)
        else:
            scores.append(min(len(think.strip()) / target_chars, 1.0))
    return scores


# A name maps to a function, or to a class whose instances are reward functions.
BUILTIN_REWARDS: dict[str, Callable[..., Any]] = {
    "accuracy": accuracy,
    "format": format_reward,
    "reasoning_length": reasoning_length,
    "math": MathEquivalence,
    "code": CodeExecution,
    "reward_model": RewardModel,
    "self_consistency": self_consistency,
    "soft_overlong": soft_overlong_punishment,
    "correct_steps": correct_steps,
}
