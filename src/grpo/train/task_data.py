"""Prompt rows for training and evaluation, from a built-in task or from files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpo.data import (
    DEFAULT_SYSTEM_PROMPT,
    ChatTemplateError,
    DatasetError,
    load_gsm8k,
    load_prompt_rows,
    multistep,
    render_prompt,
)
from grpo.data.arithmetic import generate_problems, problem_rows

# The held-out problems of a built-in task do not depend on the run's seed, so runs with
# different seeds are measured on the same set.
EVAL_SEED = 0
# Built-in tasks that draw their problems: name -> generate_problems(split, count, seed=...).
GENERATED_TASKS = {"arithmetic": generate_problems, "multistep": multistep.generate_problems}


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
    system_prompt: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows); eval rows may be empty when no held-out set is configured.

    ``system_prompt`` is the GSM8K task's system message (None: its default); for files it is
    applied later, when chat prompts are rendered (``tokenize_prompts``)."""
    if task in GENERATED_TASKS:
        generate = GENERATED_TASKS[task]
        train = problem_rows(generate("rl", num_train_prompts, seed=seed))
        evals = problem_rows(generate("eval", num_eval_prompts, seed=EVAL_SEED))
        return train, evals
    if task == "gsm8k":
        if not train_path:
            raise DatasetError("data.train_path: the gsm8k task needs the path of a GSM8K .jsonl")
        system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        train = load_gsm8k(train_path, system_prompt=system)
        evals = load_gsm8k(eval_path, system_prompt=system)[:num_eval_prompts] if eval_path else []
        return train, evals
    if not train_path:
        raise DatasetError("data.train_path: required when data.task is 'file'")
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
    source: str = "the dataset",
) -> list[list[int]]:
    """Token ids of each row's rendered prompt. Chat templates add their own special tokens.

    A chat prompt the tokenizer cannot render raises ``ChatTemplateError`` naming ``source``
    (the file) and the row."""
    out = []
    for i, row in enumerate(rows):
        prompt = row[prompt_column]
        try:
            text = render_prompt(prompt, tokenizer, system_prompt=system_prompt)
        except ChatTemplateError as e:
            message = e.message.removeprefix("render_prompt: ")
            raise ChatTemplateError(
                f"{source} row {i} (0-based), column {prompt_column!r}: {message}", hint=e.hint
            ) from e
        ids = tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        out.append(ids)
    return out
