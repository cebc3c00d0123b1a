"""Prompt rows for training and evaluation, from a built-in task or from files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpo.data import load_gsm8k, load_prompt_rows, render_prompt
from grpo.data.arithmetic import generate_problems, problem_rows

# The held-out arithmetic problems do not depend on the run's seed, so runs with different
# seeds are measured on the same set.
EVAL_SEED = 0


def load_rows(
    *,
    task: str,
    train_path: str | None,
    eval_path: str | None,
    split: str,
    prompt_column: str,
    num_train_prompts: int,
    num_eval_prompts: int,
    seed: int,
    required_columns: Sequence[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows); eval rows may be empty when no held-out set is configured."""
    if task == "arithmetic":
        train = problem_rows(generate_problems("rl", num_train_prompts, seed=seed))
        evals = problem_rows(generate_problems("eval", num_eval_prompts, seed=EVAL_SEED))
        return train, evals
    if task == "gsm8k":
        if not train_path:
            raise ValueError("data.train_path: the gsm8k task needs the path of a GSM8K .jsonl")
        train = load_gsm8k(train_path)
        evals = load_gsm8k(eval_path)[:num_eval_prompts] if eval_path else []
        return train, evals
    assert train_path is not None  # checked by config validation
    train = load_prompt_rows(
        train_path, split=split, prompt_column=prompt_column, required_columns=required_columns
    )
    evals = []
    if eval_path:
        evals = load_prompt_rows(
            eval_path, split=split, prompt_column=prompt_column, required_columns=required_columns
        )[:num_eval_prompts]
    return train, evals


def tokenize_prompts(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    prompt_column: str,
    system_prompt: str | None,
) -> list[list[int]]:
    """Token ids of each row's rendered prompt. Chat templates add their own special tokens."""
    out = []
    for row in rows:
        prompt = row[prompt_column]
        text = render_prompt(prompt, tokenizer, system_prompt=system_prompt)
        ids = tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        out.append(ids)
    return out
