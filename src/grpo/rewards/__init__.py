"""Reward functions and their combination.

A reward function is a plain callable `fn(prompts, completions, **columns) -> list[float | None]`
(the contract TRL users know); `score_completions` runs several and combines them. Built-ins:
accuracy, format, reasoning_length (functions) and math, code, reward_model (classes, built once
with their kwargs). See docs/rewards.md.
"""

from grpo.rewards.builtin import BUILTIN_REWARDS, accuracy, format_reward, reasoning_length
from grpo.rewards.code_reward import CodeExecution, extract_code, parse_tests
from grpo.rewards.combine import ON_ERROR, RewardFunction, RewardScores, score_completions
from grpo.rewards.errors import RewardError, RewardSpecError
from grpo.rewards.extract import completion_text, extract_answer, extract_number, parse_number
from grpo.rewards.loading import required_columns, resolve_reward
from grpo.rewards.math_reward import MathEquivalence
from grpo.rewards.reward_model import RewardModel
from grpo.rewards.sandbox import SandboxError, SandboxLimits, SandboxResult, run_in_sandbox

__all__ = [
    "BUILTIN_REWARDS",
    "ON_ERROR",
    "CodeExecution",
    "MathEquivalence",
    "RewardError",
    "RewardFunction",
    "RewardModel",
    "RewardScores",
    "RewardSpecError",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "accuracy",
    "completion_text",
    "extract_answer",
    "extract_code",
    "extract_number",
    "format_reward",
    "parse_number",
    "parse_tests",
    "reasoning_length",
    "required_columns",
    "resolve_reward",
    "run_in_sandbox",
    "score_completions",
]
