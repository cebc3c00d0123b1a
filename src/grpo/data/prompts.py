"""Read a prompt dataset into a list of row dicts, checking every row before training starts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grpo.data.errors import DatasetError

__all__ = ["load_prompt_rows", "prompt_problem", "read_jsonl"]

# How many problems a DatasetError message lists; the rest are counted (all are in .problems).
_MAX_PROBLEMS_SHOWN = 5


def load_prompt_rows(
    source: str | Path,
    *,
    split: str = "train",
    prompt_column: str = "prompt",
    required_columns: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Load prompt rows from `source` and validate every one.

    source:
        - a `.jsonl` file: one JSON object per line, blank lines skipped;
        - a `.parquet` file (read with pyarrow);
        - otherwise a Hugging Face `datasets` source: a folder written by `save_to_disk`
          (read with `load_from_disk`; for a DatasetDict, `split` picks the split), else
          anything `datasets.load_dataset(source, split=split)` accepts.
    prompt_column: the column holding the prompt: a non-empty string, or a non-empty list of
        chat messages `{"role": str, "content": str}`.
    required_columns: columns every row must have with a non-null value (for example the
        columns the reward functions need, such as "answer"), of the same kind in every row
        (all strings, all numbers, all lists, ...: a mix is a data error).

    Rows keep all their columns. Raises `DatasetError` naming the source, the row (1-based line
    number for JSONL, 0-based row index otherwise) and the column; all rows are checked, and the
    message lists the first few problems.
    """
    required = list(dict.fromkeys(required_columns))
    if prompt_column in required:
        required.remove(prompt_column)
    name = str(source)
    located, problems = _read(source, split)
    if not located and not problems:
        raise DatasetError(f"{name}: the dataset has no rows")

    first_kind: dict[str, tuple[str, str]] = {}  # column -> (kind, where it was first seen)
    for where, row in located:
        present = ", ".join(map(str, row)) or "none"
        if prompt_column not in row:
            hint = "" if prompt_column != "prompt" else "; set prompt_column if it has another name"
            problems.append(
                f"{name} {where}: missing column {prompt_column!r} (columns present: "
                f"{present}){hint}"
            )
        else:
            problem = prompt_problem(row[prompt_column])
            if problem is not None:
                problems.append(f"{name} {where}: column {prompt_column!r} {problem}")
        for column in required:
            if column not in row:
                problems.append(
                    f"{name} {where}: missing column {column!r} (columns present: {present})"
                )
            elif row[column] is None:
                problems.append(f"{name} {where}: column {column!r} is null")
            else:
                kind = _kind(row[column])
                seen = first_kind.setdefault(column, (kind, where))
                if seen[0] != kind:
                    problems.append(
                        f"{name} {where}: column {column!r} is {kind}, but in {seen[1]} it is "
                        f"{seen[0]}; a column holds one kind of value"
                    )

    if problems:
        shown = "\n".join(problems[:_MAX_PROBLEMS_SHOWN])
        more = len(problems) - _MAX_PROBLEMS_SHOWN
        if more > 0:
            shown += f"\n... and {more} more problem{'s' if more > 1 else ''} in {name}"
        raise DatasetError(shown, problems=problems)
    return [row for _, row in located]


def _kind(value: Any) -> str:
    """A column value's kind, as a phrase: ints and floats are both numbers."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with a prompt value, as a phrase ("is an empty string"), or None if it is
    a usable prompt: a non-empty string or a non-empty list of {"role": str, "content": str}."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "is an empty string"
    if isinstance(prompt, list | tuple):
        if not prompt:
            return "is an empty list of messages"
        for j, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                return (
                    f"message {j} is a {type(message).__name__}, not a dict with 'role' and "
                    "'content'"
                )
            role = message.get("role")
            if not isinstance(role, str) or not role:
                return f"message {j} has no 'role' string (keys: {', '.join(map(str, message))})"
            if not isinstance(message.get("content"), str):
                return (
                    f"message {j} ({role}) has no 'content' string "
                    f"(got {type(message.get('content')).__name__})"
                )
        return None
    if prompt is None:
        return "is null"
    return (
        "must be a string or a list of chat messages {'role': ..., 'content': ...}, "
        f"got {type(prompt).__name__}"
    )


def _read(source: str | Path, split: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(location, row) pairs and the problems met while reading."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".parquet"):
        if path.is_dir():
            raise DatasetError(
                f"{source}: is a directory, not a {suffix} file",
                hint="a folder written by datasets' save_to_disk must not be named like a file",
            )
        if not path.is_file():
            raise DatasetError(f"{source}: file not found{looked_in(source, path)}")
        if suffix == ".jsonl":
            return read_jsonl(path, display=str(source))
        rows = _read_parquet(path, str(source))
    elif path.is_file():
        raise DatasetError(
            f"{source}: unsupported file type {path.suffix!r}; use a .jsonl or .parquet file, "
            "a folder written by datasets' save_to_disk, or a Hugging Face dataset name"
        )
    else:
        rows = _read_hf(source, path, split)
    return [(f"row {i} (0-based)", row) for i, row in enumerate(rows)], []


def read_jsonl(
    path: Path, *, display: str | None = None
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Parse a JSONL file into ("line N", row) pairs (N 1-based) and a list of problems
    (malformed JSON, non-object lines, bad UTF-8), each naming the file and line."""
    name = display if display is not None else str(path)
    located: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"{name}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{name} line {number}: not valid UTF-8 ({exc.reason})")
                continue
            if not line.strip():
                continue
            try:
                # Without the line ending, so the column in an error counts within this line.
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                problems.append(
                    f"{name} line {number}: invalid JSON ({exc.msg} at column {exc.colno})"
                )
                continue
            if not isinstance(row, dict):
                problems.append(
                    f"{name} line {number}: expected a JSON object, got {type(row).__name__}"
                )
                continue
            located.append((f"line {number}", row))
    return located, problems


def looked_in(given: str | Path, path: Path) -> str:
    """Where a relative path was looked for; nothing when it was absolute already."""
    resolved = str(path.resolve())
    return "" if resolved == str(given) else f" (looked in {resolved})"


def _read_parquet(path: Path, name: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{name}: cannot read as Parquet ({exc})") from exc
    return table.to_pylist()


def _read_hf(source: str | Path, path: Path, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            f"{source}: not a .jsonl or .parquet file, so it would be read with the Hugging Face "
            "'datasets' library, which is not installed; run `pip install datasets` or convert "
            "the data to JSONL"
        ) from exc

    saved = path.is_dir() and any(
        (path / marker).is_file() for marker in ("state.json", "dataset_dict.json")
    )
    if saved:
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DatasetError(
                f"{source}: datasets.load_from_disk failed: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetError(
                    f"{source}: no split {split!r}; the saved dataset has splits "
                    f"{', '.join(loaded)}. Pass one of them as split"
                )
            loaded = loaded[split]
    else:
        try:
            loaded = datasets.load_dataset(str(source), split=split)
        except Exception as exc:
            raise DatasetError(
                f"{source}: not a local .jsonl/.parquet file or saved dataset folder, and "
                f"datasets.load_dataset({str(source)!r}, split={split!r}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(loaded, datasets.Dataset):
        raise DatasetError(
            f"{source}: expected a datasets.Dataset for split {split!r}, got "
            f"{type(loaded).__name__}"
        )
    return loaded.to_list()
