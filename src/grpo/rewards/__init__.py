"""Reward functions and their combination.

A reward function is a plain callable `fn(prompts, completions, **columns) -> list[float | None]`
(the contract TRL users know); `score_completions` runs several and combines them.
"""

from grpo.rewards.builtin import BUILTIN_REWARDS, accuracy, format_reward, reasoning_length
from grpo.rewards.combine import RewardFunction, RewardScores, score_completions
from grpo.rewards.errors import RewardError, RewardSpecError
from grpo.rewards.extract import completion_text, extract_answer, extract_number, parse_number
from grpo.rewards.loading import required_columns, resolve_reward

__all__ = [
    "BUILTIN_REWARDS",
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "RewardSpecError",
    "accuracy",
    "completion_text",
    "extract_answer",
    "extract_number",
    "format_reward",
    "parse_number",
    "reasoning_length",
    "required_columns",
    "resolve_reward",
    "score_completions",
]
