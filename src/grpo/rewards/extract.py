"""Pull the final answer out of a completion and read it as a number.

Three steps, kept apart so each can be tested and reused on its own:

- `completion_text(c)`: the text of a completion, whether it is a plain string or a list of chat
  messages.
- `extract_answer(text)`: the span that holds the final answer (a string, not yet a number), so
  tasks with non-numeric answers ("B", "x^2") can use it too.
- `parse_number(s)`: that span read as a float, tolerant of the decorations models and datasets
  put around numbers (thousands separators, currency, units, percent, LaTeX fractions).

`extract_number(text)` chains the last two, looking inside the span when it holds more than a
bare number ("<answer>She makes 18 dollars</answer>").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["completion_text", "extract_answer", "extract_number", "parse_number"]


def completion_text(completion: Any) -> str:
    """Return the text of one completion (or prompt).

    Accepts a plain string, one chat message `{"role": ..., "content": ...}`, or a list of chat
    messages such as `[{"role": "assistant", "content": "..."}]`. The contents of several
    messages are joined with newlines. A message content may also be a list of parts
    (`[{"type": "text", "text": "..."}]`, the multimodal form); only the text parts are kept.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, list | tuple):
        return "\n".join(_content_text(_message_content(m)) for m in completion)
    raise TypeError(
        "completion_text: expected a string or a list of chat messages "
        f"({{'role': ..., 'content': ...}}), got {type(completion).__name__}"
    )


def _message_content(message: Any) -> Any:
    if not isinstance(message, Mapping):
        raise TypeError(
            "completion_text: a chat completion must be a list of message dicts with a "
            f"'content' key, but one item is a {type(message).__name__}"
        )
    return message.get("content")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        parts = [p.get("text") or "" for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    raise TypeError(
        f"completion_text: message content must be a string, got {type(content).__name__}"
    )


# --- finding the answer span -------------------------------------------------------------------

# One number as it appears in running text. Thousands groups must be complete ("1,234" but not
# "1,2345"), and a minus sign counts only when it is not glued to something before it, so the
# "-3" inside "16-3=13" is read as 3, not as negative three.
_CORE = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_TOKEN = (
    rf"(?:(?<![\w)\]}}])[-\u2212])?[$€£]?(?:(?<![\w)\]}}])-)?(?:{_CORE})(?:\s?/\s?(?:{_CORE}))?"
)
_NUMBER_TOKEN_RE = re.compile(_NUMBER_TOKEN)

# Innermost <answer>...</answer>: the content may not itself contain "<answer>", so a stray
# unclosed opening tag does not swallow the real one after it.
_ANSWER_TAG_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES_RE = re.compile(rf"####\s*({_NUMBER_TOKEN})")
# "The answer is 42", "final answer: 42", "**Answer:** $42" and the like.
_ANSWER_IS_RE = re.compile(
    rf"\banswer\b[*\s]*(?:is\b|:|=)[*\s:]*({_NUMBER_TOKEN})",
    re.IGNORECASE,
)


def extract_answer(text: str) -> str | None:
    """Return the final-answer span of `text`, or None when there is none.

    Rules, in priority order; the first that finds a non-empty span wins:

    1. the content of the last `<answer>...</answer>` (tags matched case-insensitively; stripped);
    2. the content of the last `\\boxed{...}` (braces balanced, so `\\boxed{\\frac{1}{2}}`
       gives `\\frac{1}{2}`);
    3. the number after the last `####` (the GSM8K convention);
    4. the number after the last "answer is" / "answer:" (case-insensitive);
    5. the last number anywhere in the text.

    Rules 3-5 return just the number token (with its sign, currency symbol and thousands
    separators, e.g. "$1,234.50"); rules 1-2 return the whole span, which may hold words.
    """
    for content in reversed(_ANSWER_TAG_RE.findall(text)):
        if content.strip():
            return content.strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_HASHES_RE, _ANSWER_IS_RE, _NUMBER_TOKEN_RE):
        matches = pattern.findall(text)
        if matches:
            return matches[-1].strip()
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance and whose content is not empty."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = text[match.end() : i].strip()
                    if content:
                        return content
                    break
        # Unbalanced (a truncated completion) or empty: try an earlier one.
    return None


# --- reading a span as a number ----------------------------------------------------------------

_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textrm|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_VARIABLE_PREFIX_RE = re.compile(r"^[A-Za-z]\w*\s*=\s*")
_FULL_NUMBER_RE = re.compile(
    r"(?P<sign>[-+])?\s*"
    # A mixed number "1 1/2": the whole part only counts when a fraction follows.
    r"(?:(?P<whole>\d+)\s+(?=\d+\s*/))?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"\s*(?P<rest>.*)",
    re.DOTALL,
)
# Units may carry digits only as exponents or glued to letters ("cm^2", "m2", "km/h"); any other
# digit after the number means the span holds more than one number ("18 dollars and 50 cents").
_LOOSE_DIGIT_RE = re.compile(r"(?<![\^A-Za-z])\d")


def parse_number(s: str | None) -> float | None:
    """Read `s` as one number, or return None when it is not one.

    Accepted: an optional sign (also the Unicode minus), currency ($ € £ ¥ ₹, anywhere), digits
    with comma thousands separators ("1,234,567.5"), decimals (".5"), exponents ("1e5"), simple
    fractions ("3/4", "\\frac{3}{4}", "-\\dfrac{1}{2}"), mixed numbers ("1 1/2"), a percent sign
    ("50%" is 50, not 0.5), and trailing units or words without further numbers ("18 dollars",
    "5 cm^2", "3 km/h."). Markdown emphasis, LaTeX `\\text{}` units, `$...$` math delimiters, a
    leading "x =" and trailing sentence punctuation are ignored. Anything else, including a span
    with two numbers ("5 or 6"), gives None rather than a guess.
    """
    if s is None:
        return None
    t = _normalise(s)
    if not t:
        return None
    match = _FULL_NUMBER_RE.fullmatch(t)
    if match is None:
        return None
    rest = match["rest"].strip()
    if rest and (not (rest[0] in "%°'\"" or rest[0].isalpha()) or _LOOSE_DIGIT_RE.search(rest)):
        return None
    try:
        value = float(match["num"].replace(",", ""))
        if match["den"] is not None:
            den = float(match["den"])
            if den == 0:
                return None
            value /= den
        if match["whole"] is not None:
            value += float(match["whole"])
    except (ValueError, OverflowError):
        return None
    if match["sign"] == "-":
        value = -value
    return value if math.isfinite(value) else None


def _normalise(s: str) -> str:
    t = s.strip()
    t = _FRAC_RE.sub(r"\1/\2", t)
    t = _LATEX_TEXT_RE.sub(r" \1", t)
    t = _DEGREE_RE.sub("°", t)
    t = t.replace("{,}", ",")  # LaTeX thousands separator: 1{,}234
    for latex, plain in (("\\%", "%"), ("\\$", "$"), ("\\(", ""), ("\\)", ""), ("\\[", "")):
        t = t.replace(latex, plain)
    t = t.replace("\\]", "")
    t = re.sub(r"\\[,;:! ]", "", t)  # LaTeX spacing commands, also used as thousands separators
    t = t.replace("\u2212", "-")  # Unicode minus sign
    t = re.sub(r"[*`$€£¥₹]", "", t)  # emphasis, math delimiters, currency
    t = t.strip().rstrip(".,;:!?").strip()
    t = _VARIABLE_PREFIX_RE.sub("", t)
    return t


def extract_number(text: str) -> float | None:
    """The final answer of `text` as a number, or None when none can be read.

    `extract_answer` picks the span; when the span is more than a bare number (an `<answer>`
    holding a sentence or a `\\boxed{}`), the same rules are applied again inside it, so
    "<answer>She makes $18 a day</answer>" gives 18.0.
    """
    span = extract_answer(text)
    while span is not None:
        value = parse_number(span)
        if value is not None:
            return value
        inner = extract_answer(span)
        # Every rule strips something from the span, so this ends; the check guards it anyway.
        if inner is None or len(inner) >= len(span):
            return None
        span = inner
    return None
