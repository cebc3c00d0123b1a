"""What can be wrong with a run's input, checked before any model or engine loads.

``preflight(cfg)`` takes seconds where loading the model and starting vLLM take a minute, so a
mistake costs seconds. In order:

1. the output directory can be written (not under a file, not on a read-only disk);
2. every reward function resolves (built-in name, module, file, function, its kwargs and
   settings) and so does the step reward; each error names the key (``rewards[1]``);
3. the model path (a directory with ``config.json``, a cached or reachable hub id) and its
   tokenizer, which is cheap to load;
4. the datasets: readable, well-formed, with the columns the rewards need, of one kind each,
   and enough prompts for one step;
5. every prompt renders and tokenizes (chat prompts need the tokenizer's chat template) and
   fits ``rollout.max_model_len``;
6. each reward function is called once on an empty completion for the first rows, so one that
   raises, returns the wrong number or type of values, NaN, or runs past its ``timeout_s``
   stops the run now rather than after the engine has started.

What it returns (rewards, rows, token ids, tokenizer, model path) is what setup needs, so
nothing is done twice. Every failure is a ``grpo.errors`` error naming the key, file, row or
function.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from grpo.config import GRPOConfig
from grpo.errors import ConfigError, DatasetError, RewardError, RewardSpecError, RunDirError
from grpo.rewards import TRAINER_COLUMNS, RewardFunction, accuracy, score_completions
from grpo.rewards.builtin import gold_number
from grpo.train.models import load_tokenizer, resolve_model_path
from grpo.train.task_data import GENERATED_TASKS, load_rows, tokenize_prompts

__all__ = [
    "Preflight",
    "build_reward_functions",
    "build_step_reward",
    "check_output_dir",
    "preflight",
    "probe_rewards",
]

# Rows the reward functions are tried on before training.
PROBE_ROWS = 2
# Rows whose gold answers are read before training when the accuracy reward is used.
GOLD_ROWS = 20


@dataclass
class Preflight:
    """The checked inputs of a run."""

    model_path: str  # what transformers and vLLM load: a directory or a hub id
    tokenizer: Any
    reward_fns: list[RewardFunction]
    step_reward: RewardFunction | None  # advantage = process only
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    train_prompt_ids: list[list[int]]
    eval_prompt_ids: list[list[int]]
    output_dir: Path  # train.output_dir with {timestamp} filled in; checked, not created


def preflight(cfg: GRPOConfig, *, probe: bool = True) -> Preflight:
    """Check everything about ``cfg``'s inputs that can be checked without the model's weights
    (see the module docstring); ``probe=False`` skips calling the reward functions."""
    output_dir = check_output_dir(cfg.train.output_dir)
    reward_fns = build_reward_functions(cfg)
    step_reward = build_step_reward(cfg)

    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)

    d = cfg.data
    needs = {rf.name: rf.required_columns() for rf in reward_fns}
    if step_reward is not None:
        needs[step_reward.name] = step_reward.required_columns()
    required = sorted(set().union(*needs.values()))
    train_rows, eval_rows = load_rows(
        task=d.task,
        train_path=d.train_path,
        eval_path=d.eval_path,
        split=d.split,
        prompt_column=d.prompt_column,
        num_train_prompts=d.num_train_prompts,
        num_eval_prompts=d.num_eval_prompts,
        seed=cfg.train.seed,
        required_columns=required,
        system_prompt=d.system_prompt,
    )
    source = f"the {d.task} task" if d.task in GENERATED_TASKS else d.train_path
    _check_columns(train_rows, needs, str(source), d.prompt_column)
    if any(rf.fn is accuracy for rf in reward_fns):
        _check_gold_answers(train_rows, str(source))
    _check_prompt_count(cfg, len(train_rows), str(source))
    _check_system_prompt(cfg, train_rows, str(source))

    tok = dict(prompt_column=d.prompt_column, system_prompt=d.system_prompt)
    train_ids = tokenize_prompts(train_rows, tokenizer, source=str(source), **tok)
    eval_ids = tokenize_prompts(eval_rows, tokenizer, source=str(d.eval_path or source), **tok)
    _check_prompt_lengths(cfg, train_ids, eval_ids, str(source))

    if probe:
        probe_rewards(reward_fns, train_rows, d.prompt_column)
    return Preflight(
        model_path=path,
        tokenizer=tokenizer,
        reward_fns=reward_fns,
        step_reward=step_reward,
        train_rows=train_rows,
        eval_rows=eval_rows,
        train_prompt_ids=train_ids,
        eval_prompt_ids=eval_ids,
        output_dir=output_dir,
    )


def check_output_dir(pattern: str) -> Path:
    """``train.output_dir`` with ``{timestamp}`` filled in, after checking that it can be
    created and written: no part of it is a file, and a file can be made in the deepest part
    that exists. Creates nothing (the check's probe file is removed). Raises ``RunDirError``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(pattern.replace("{timestamp}", stamp)).expanduser()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise RunDirError(
            f"train.output_dir: {path} {where}", hint="choose a directory path for the run"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".grpo-write-check-", dir=existing)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise RunDirError(
            f"train.output_dir: cannot write in {existing} ({reason}), so {path} cannot be made",
            hint="choose a directory you can write to, e.g. train.output_dir=runs/{timestamp}",
        ) from e
    os.close(fd)
    os.unlink(probe)
    return path


def build_reward_functions(cfg: GRPOConfig) -> list[RewardFunction]:
    """The configured reward functions, resolved and checked; errors name ``rewards[i]``."""
    fns = []
    for i, r in enumerate(cfg.rewards):
        try:
            fns.append(
                RewardFunction.from_spec(
                    r.name,
                    weight=r.weight,
                    kwargs=dict(r.kwargs),
                    timeout_s=r.timeout_s,
                    on_error=r.on_error,
                )
            )
        except RewardSpecError as e:
            raise RewardSpecError(f"rewards[{i}]: {e.message}", hint=e.hint) from e
    names = [f.name for f in fns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"key 'rewards': the functions {dup} appear twice",
            hint="list each once; their weights add up in one entry",
        )
    return fns


def build_step_reward(cfg: GRPOConfig) -> RewardFunction | None:
    """advantage = process: the step reward, called like any reward (timeout, errors named)."""
    a = cfg.algorithm
    if not a.step_reward:
        return None
    try:
        return RewardFunction.from_spec(
            a.step_reward, weight=1.0, kwargs=dict(a.step_reward_kwargs), on_error="raise"
        )
    except RewardSpecError as e:
        raise RewardSpecError(f"algorithm.step_reward: {e.message}", hint=e.hint) from e


def _check_columns(
    rows: list[dict[str, Any]], needs: dict[str, set[str]], source: str, prompt_column: str
) -> None:
    # Files were checked row by row by load_rows; the built-in tasks have fixed columns.
    present = set(rows[0])
    for name, columns in needs.items():
        missing = sorted(columns - present)
        if missing:
            raise DatasetError(
                f"reward function {name!r} needs columns {missing}, which the rows of {source} "
                f"do not have (they have {', '.join(sorted(present))})",
                hint="add the columns to the data, or give the function defaults for them",
            )
    clash = sorted((present - {prompt_column}) & set(TRAINER_COLUMNS))
    if clash:
        raise DatasetError(
            f"{source}: columns {clash} clash with arguments the trainer passes to reward "
            "functions",
            hint="rename those columns",
        )


def _check_gold_answers(rows: list[dict[str, Any]], source: str) -> None:
    """The accuracy reward gives None for a gold answer it cannot read (a data fault in one
    row). When it can read none of the first rows, the column holds something else (a list, a
    worked solution) and every completion would go unscored: stop."""
    head = rows[:GOLD_ROWS]
    if any(gold_number(r.get("answer")) is not None for r in head):
        return
    first = head[0].get("answer")
    raise DatasetError(
        f"{source} row 0 (0-based): column 'answer' holds {first!r:.80} (a "
        f"{type(first).__name__}), which the accuracy reward cannot read as a number, and "
        f"neither can it in the first {len(head)} rows",
        hint="the accuracy reward needs the final answer: a number, or a string such as "
        "'1,234' or '3/4'",
    )


def _check_prompt_count(cfg: GRPOConfig, count: int, source: str) -> None:
    per_step = cfg.train.batch_size // cfg.algorithm.group_size
    if count < per_step:
        raise DatasetError(
            f"{source} has {count} prompts, but one step needs train.batch_size / "
            f"algorithm.group_size = {cfg.train.batch_size} / {cfg.algorithm.group_size} = "
            f"{per_step}",
            hint="add prompts, or lower train.batch_size",
        )


def _check_system_prompt(cfg: GRPOConfig, rows: list[dict[str, Any]], source: str) -> None:
    d = cfg.data
    if d.task != "file" or d.system_prompt is None:
        return
    if all(isinstance(r[d.prompt_column], str) for r in rows):
        raise ConfigError(
            f"key 'data.system_prompt': the prompts of {source} are plain strings, which the "
            "model gets as they are, so it would be ignored",
            hint="give prompts as chat messages [{role, content}], or put the instruction in "
            "the prompt text and remove data.system_prompt",
        )


def _check_prompt_lengths(
    cfg: GRPOConfig, train_ids: list[list[int]], eval_ids: list[list[int]], source: str
) -> None:
    limit = cfg.rollout.max_model_len
    if not limit:
        return
    for ids, name in ((train_ids, source), (eval_ids, cfg.data.eval_path or source)):
        for i, prompt in enumerate(ids):
            if len(prompt) >= limit:
                raise ConfigError(
                    f"key 'rollout.max_model_len': {limit} tokens leave no room after prompt "
                    f"{i} (0-based) of {name}, which has {len(prompt)} tokens",
                    hint="raise rollout.max_model_len (0: the longest prompt + max_new_tokens)",
                )


def probe_rewards(
    reward_fns: list[RewardFunction],
    rows: list[dict[str, Any]],
    prompt_column: str,
) -> None:
    """Call every reward function once, as the trainer will, on an empty completion for each
    of the first ``PROBE_ROWS`` rows; raise its ``RewardError`` (raised, timed out, wrong
    count, type, NaN) marked as found before training."""
    head = rows[:PROBE_ROWS]
    k = len(head)
    columns: dict[str, list[Any]] = {
        c: [r.get(c) for r in head] for c in head[0] if c != prompt_column
    }
    columns.update(
        {
            "group_ids": list(range(k)),
            "completion_ids": [[] for _ in range(k)],
            "completion_lengths": [0] * k,
        }
    )
    try:
        score_completions(
            reward_fns,
            [r[prompt_column] for r in head],
            [""] * k,
            columns,
            row_ids=list(range(k)),
        )
    except RewardError as e:
        raise RewardError(
            f"checking the rewards on an empty completion before training: {e.message}",
            function=e.function,
            row=e.row,
            dataset_row=e.dataset_row,
            hint=e.hint,
        ) from e
