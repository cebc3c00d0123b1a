"""Answer checking with math-verify, in a worker process (or in-process for `workers=0`).

Run as a script by `grpo.rewards.math_reward`: it prints `{"ready": true}` once math-verify is
imported, then answers one JSON request per line on stdin with one JSON line on stdout:

    {"completion": str, "gold": str, "timeout": int}
 -> {"gold_ok": bool, "answer": str | null, "correct": bool}

Why a separate process: sympy can spend unbounded time (or memory) on a pathological answer
such as `10^{10^{10}}`, sometimes inside C code that no signal interrupts. math-verify's own
time limits (signal.alarm, so main thread only) stop most of that here; the trainer kills the
worker for the rest. Also, math-verify's plain-expression parser goes through sympy's
eval-based `parse_expr`, which keeps model text out of the trainer's process.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from math_verify import parse, verify

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
# Text that already marks its own math: math-verify finds the math inside it.
_DELIMITED_RE = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
_BOXED_RE = re.compile(r"\\boxed|\\fbox")
_HASHES_RE = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.M)
# LaTeX thousands separators between digit groups ("1\\,000", "1{,}000"), which math-verify
# would read as a product or a tuple.
_DIGIT_GROUP_RE = re.compile(r"(?<=\d)(?:\\[,;:! ]|\{,\})\s*(?=\d{3}(?!\d))")
_GOLD_CACHE_SIZE = 4096
_gold_cache: dict[tuple[str, int | None], list[Any]] = {}


def answer_readings(completion: str, timeout: int | None) -> list[list[Any]]:
    """The completion's final answer, parsed; more than one reading where the text is ambiguous.

    The last non-empty `<answer>...</answer>` holds the answer when there is one; else, when
    there is no `\\boxed{}`, the text after the last GSM8K-style `#### ` line. That span,
    without math delimiters, is read both as LaTeX math (`$...$`, so `\\frac12`, `(1,2]` and
    `\\{1,2\\}` parse) and as text (so "18 dollars" gives 18); either reading may match the
    gold. Otherwise math-verify searches the whole completion: `\\boxed{}` first, then the
    last expression.
    """
    contents = [c.strip() for c in _ANSWER_TAG_RE.findall(completion) if c.strip()]
    if not contents:
        hashes = _HASHES_RE.findall(completion)
        if not hashes or _BOXED_RE.search(completion):
            return [_parse(completion, timeout)]
        # GSM8K's "#### 72" closes the solution; the text before it has dollar signs that
        # would be taken for LaTeX math.
        contents = [hashes[-1].strip()]
    content = contents[-1]
    if _DELIMITED_RE.search(content):
        return [_parse(content, timeout)]
    return [_parse(f"${content}$", timeout), _parse(content, timeout)]


def gold_reading(gold: str, timeout: int | None) -> list[Any]:
    """A gold answer is math (`\\frac{1}{2}`, `[1, 2)`, `50\\%`): read as LaTeX first."""
    key = (gold, timeout)
    if key not in _gold_cache:
        text = gold.strip()
        parsed = [] if _DELIMITED_RE.search(text) else _parse(f"${text}$", timeout)
        if not parsed:
            parsed = _parse(text, timeout)
        if len(_gold_cache) >= _GOLD_CACHE_SIZE:
            _gold_cache.clear()
        _gold_cache[key] = parsed
    return _gold_cache[key]


def _parse(text: str, timeout: int | None) -> list[Any]:
    return parse(_DIGIT_GROUP_RE.sub("", text), parsing_timeout=timeout)


def check(completion: str, gold: str, timeout: int | None) -> dict[str, Any]:
    gold_parsed = gold_reading(gold, timeout)
    if not gold_parsed:
        return {"gold_ok": False, "answer": None, "correct": False}
    readings = [r for r in answer_readings(completion, timeout) if r]
    answer = str(readings[0][-1])[:200] if readings else None
    correct = any(verify(gold_parsed, r, timeout_seconds=timeout) for r in readings)
    return {"gold_ok": True, "answer": answer, "correct": bool(correct)}


def _serve() -> None:
    # Set by the trainer: a worker that a pathological answer drives out of memory dies alone.
    if len(sys.argv) > 1:
        import resource

        limit = int(sys.argv[1]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = check(request["completion"], request["gold"], request.get("timeout"))
        except Exception as exc:  # MemoryError included: a huge answer must not end the worker
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
