"""Reward functions and their combination.

A reward function is a plain callable `fn(prompts, completions, **columns) -> list[float | None]`
(the contract TRL users know); `score_completions` runs several and combines them. Built-ins:
accuracy, format, reasoning_length (functions) and math, code, reward_model (classes, built once
with their kwargs). See docs/rewards.md.

Modules: `loading` (a spec string to a callable), `spec` (`RewardFunction`: one configured
function, checked when built), `batch` (the arguments of one call), `calling` (time limits,
async), `blame` (checking what a call returned, and naming the completion a failure is due
to), `scoring` (`score_completions`: all functions on one batch, weighted and summed);
the built-ins; and `sandbox/` (the process that runs model-written code, and the `code`
reward on it).
"""

from grpo.rewards.batch import TRAINER_COLUMNS
from grpo.rewards.builtin import BUILTIN_REWARDS, accuracy, format_reward, reasoning_length
from grpo.rewards.errors import RewardError, RewardSpecError
from grpo.rewards.extract import completion_text, extract_answer, extract_number, parse_number
from grpo.rewards.loading import required_columns, resolve_reward
from grpo.rewards.math_reward import MathEquivalence
from grpo.rewards.reward_model import RewardModel
from grpo.rewards.sandbox import (
    CodeExecution,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    extract_code,
    parse_tests,
    run_in_sandbox,
)
from grpo.rewards.scoring import RewardScores, score_completions
from grpo.rewards.spec import ON_ERROR, RewardFunction

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
    "TRAINER_COLUMNS",
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
