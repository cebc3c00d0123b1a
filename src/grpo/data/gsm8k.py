"""GSM8K (grade-school math word problems) in the openai/grade-school-math JSONL format.

Each line is `{"question": "...", "answer": "...reasoning...\\n#### 72"}`; the number after
`####` is the gold answer. Pair the rows with the built-in `accuracy` and `format` rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo.data.errors import DatasetError
from grpo.data.prompts import looked_in, read_jsonl
from grpo.rewards.extract import parse_number

__all__ = ["DEFAULT_SYSTEM_PROMPT", "load_gsm8k", "parse_gsm8k_row"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step. Write your reasoning inside "
    "<think> </think> tags, then write only the final numerical answer inside <answer> </answer> "
    "tags, for example: <think> 3 + 4 = 7 </think> <answer> 7 </answer>"
)

_MAX_PROBLEMS_SHOWN = 5


def load_gsm8k(
    path: str | Path,
    *,
    as_chat: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[dict[str, Any]]:
    """Load a GSM8K JSONL file as prompt rows.

    Each row has:
        prompt: when `as_chat`, chat messages `[system, user]` (no system message when
            `system_prompt` is None); otherwise one string: the system prompt, a blank line,
            then "User: {question}\\nAssistant:".
        answer: the gold answer after `####`, commas removed ("1,600" -> "1600"), as a string.
        solution: the dataset's full answer text (reasoning with its <<calculator>> notes, and
            the final "#### 72" line), unchanged.
        question: the question text.

    Raises `DatasetError` naming the file and line for malformed JSON, a missing or non-string
    field, or an answer without a readable number after `####`; every line is checked first.
    """
    name = str(path)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"{name}: file not found{looked_in(name, file)}")
    located, problems = read_jsonl(file, display=name)
    rows: list[dict[str, Any]] = []
    for where, record in located:
        try:
            question, answer, solution = parse_gsm8k_row(record)
        except ValueError as exc:
            problems.append(f"{name} {where}: {exc}")
            continue
        rows.append(
            {
                "prompt": _prompt(question, as_chat=as_chat, system_prompt=system_prompt),
                "answer": answer,
                "solution": solution,
                "question": question,
            }
        )
    if problems:
        shown = "\n".join(problems[:_MAX_PROBLEMS_SHOWN])
        if len(problems) > _MAX_PROBLEMS_SHOWN:
            shown += f"\n... and {len(problems) - _MAX_PROBLEMS_SHOWN} more problems in {name}"
        raise DatasetError(shown, problems=problems)
    if not rows:
        raise DatasetError(f"{name}: the file has no rows")
    return rows


def parse_gsm8k_row(record: dict[str, Any]) -> tuple[str, str, str]:
    """(question, gold answer, solution) of one GSM8K record; ValueError says what is wrong."""
    present = ", ".join(map(str, record)) or "none"
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f"missing column {key!r} (columns present: {present})")
        if not isinstance(record[key], str) or not record[key].strip():
            raise ValueError(f"column {key!r} must be a non-empty string")
    solution: str = record["answer"]
    if "####" not in solution:
        raise ValueError(
            "column 'answer' has no '####' line; GSM8K answers end with '#### <number>'"
        )
    gold = solution.rpartition("####")[2].strip().replace(",", "")
    if parse_number(gold) is None:
        raise ValueError(f"column 'answer': {gold!r} after '####' is not a number")
    return record["question"].strip(), gold, solution


def _prompt(question: str, *, as_chat: bool, system_prompt: str | None) -> Any:
    if as_chat:
        messages = [{"role": "user", "content": question}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    head = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{head}User: {question}\nAssistant:"
