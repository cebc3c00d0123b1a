"""Step-level (process) rewards, and the bridge from character offsets to token offsets.

A *step reward function* is the process-supervision counterpart of a reward function. It takes
the same arguments, ``fn(prompts, completions, **columns)``, but returns for each completion a
list of ``(reward, char_end)`` pairs, one per reasoning step: the step's reward and the
character offset in the completion's text where the step ends (exclusive, like a slice end).
``core.process_advantages`` needs token offsets instead; :func:`steps_to_token_ends` converts
them with the completion's token ids and the tokenizer that produced the text.

:func:`arithmetic_step_rewards` is an example for the built-in arithmetic task, whose
completions look like ``<think>23+45=68 68-17=51 51+8=59</think><answer>59</answer>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from grpo.rewards.extract import completion_text

__all__ = [
    "Decoder",
    "arithmetic_step_rewards",
    "correct_steps",
    "char_to_token_ends",
    "steps_to_token_ends",
    "token_char_spans",
]

# One step "a op b = c": a and c may carry a minus sign (a model may write one), b may not.
# The lookbehind keeps "a" from starting in the middle of a number or a word.
_STEP_RE = re.compile(r"(?<![\w.])(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)(?![\d.])")
# The arithmetic task's prompt: "Q: 23+45-17+8".
_PROBLEM_RE = re.compile(r"Q:\s*(\d+(?:\s*[+-]\s*\d+)+)")
_TERM_RE = re.compile(r"([+-])\s*(\d+)")


def _think_region(text: str) -> tuple[int, int, bool]:
    """(start, end, closed) of the reasoning: after the first ``<think>`` (or from the start
    when a chat template opened it in the prompt) up to the next ``</think>``, else up to
    ``<answer>``, else to the end of the text (closed = False: truncated mid-thought)."""
    opening = text.find("<think>")
    start = 0 if opening < 0 else opening + len("<think>")
    for tag in ("</think>", "<answer>"):
        end = text.find(tag, start)
        if end >= 0:
            return start, end, True
    return start, len(text), False


def _problem(prompt: Any) -> tuple[int, list[tuple[str, int]]] | None:
    """(first number, [(op, operand), ...]) of an arithmetic-task prompt, or None."""
    match = _PROBLEM_RE.search(completion_text(prompt))
    if match is None:
        return None
    expression = match.group(1)
    first = int(re.match(r"\d+", expression).group())  # type: ignore[union-attr]
    return first, [(op, int(n)) for op, n in _TERM_RE.findall(expression)]


def arithmetic_step_rewards(
    prompts: list[Any],
    completions: list[Any],
    *,
    incorrect_reward: float = 0.0,
    follow_problem: bool = True,
    **kwargs: Any,
) -> list[list[tuple[float, int]]]:
    """Score each ``a op b = c`` step of the think block: 1.0 if correct, else
    ``incorrect_reward``.

    A step is correct when ``c == a + b`` (or ``a - b``) and, with ``follow_problem`` and a
    prompt of the arithmetic task (``Q: 23+45-17+8``), it is also the problem's next step: the
    k-th step must use the problem's k-th operator and operand, and its left operand must be
    the result the completion wrote in its previous step (the first number for k = 0). So after
    an arithmetic slip the following steps still earn credit for correct local work, while
    repeating an easy step ("1+1=2 1+1=2") or going past the last term earns none. Prompts that
    are not of the task are scored on arithmetic alone.

    ``incorrect_reward``: 0.0 (default) rewards only correct steps; -1.0 makes a wrong step
    actively costly. Under process advantages only differences within a group matter, so the
    choice changes how a wrong step compares with no step at all (a completion with fewer
    steps): with 0.0 they are equal, with -1.0 a wrong step is worse than none.

    The think block is the text after ``<think>`` (or from the start, when a chat template put
    ``<think>`` in the prompt) up to ``</think>`` (or ``<answer>``). In a completion truncated
    inside it, a step that runs up to the very end is dropped: its last number may be cut off.

    Returns:
        Per completion, a list of ``(reward, char_end)`` with char_end the offset in
        ``completion_text(completion)`` just past the step's result. A completion without
        steps gets an empty list (process_advantages then gives it advantage 0).
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"arithmetic_step_rewards: {len(prompts)} prompts for {len(completions)} completions"
        )
    out: list[list[tuple[float, int]]] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion_text(completion)
        start, end, closed = _think_region(text)
        matches = list(_STEP_RE.finditer(text, start, end))
        if matches and not closed and matches[-1].end() == end:
            matches.pop()  # cut off by the length cap: "68-17=5" may be "68-17=51" unfinished
        problem = _problem(prompt) if follow_problem else None
        previous = problem[0] if problem is not None else None
        steps: list[tuple[float, int]] = []
        for k, match in enumerate(matches):
            a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            correct = c == (a + b if op == "+" else a - b)
            if problem is not None:
                terms = problem[1]
                correct = correct and k < len(terms) and terms[k] == (op, b) and a == previous
                previous = c
            steps.append((1.0 if correct else float(incorrect_reward), match.end()))
        out.append(steps)
    return out


def correct_steps(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """An outcome reward with partial credit: the share of the problem's steps that
    :func:`arithmetic_step_rewards` scores correct (in order, each from the previous result),
    so a chain with one slip in four steps earns 0.75 where ``accuracy`` gives 0.

    The denominator is the number of steps the problem has (its operators), not the number the
    completion wrote: extra steps cannot raise the score. Prompts that are not of the
    arithmetic tasks score 0.0 (there is no step count to divide by).
    """
    steps = arithmetic_step_rewards(prompts, completions, **kwargs)
    out = []
    for prompt, scored in zip(prompts, steps, strict=True):
        problem = _problem(prompt)
        if problem is None:
            out.append(0.0)
            continue
        needed = len(problem[1])
        out.append(sum(r for r, _ in scored[:needed] if r > 0) / needed)
    return out


# ---- character offsets -> token offsets ---------------------------------------------------------


class Decoder(Protocol):
    """What the offset helpers need of a tokenizer (a Hugging Face tokenizer fits)."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def token_char_spans(
    token_ids: Sequence[int], tokenizer: Decoder, *, skip_special_tokens: bool = True
) -> list[tuple[int, int]]:
    """The character span ``[start, end)`` of each token in ``tokenizer.decode(token_ids)``.

    Token k ends where the decoded prefix ``ids[:k+1]`` stops agreeing with the full text, so
    detokenisation that depends on neighbours (byte-level BPE splitting one character over
    several tokens, SentencePiece's leading spaces, special tokens skipped to "") is handled:
    a token that completes a multi-byte character owns it; the tokens before it get empty spans.
    Spans are contiguous and non-decreasing; the last ends at ``len(full text)``.

    Use the same ``skip_special_tokens`` as the text the reward function saw (the trainer's
    engine decodes with True). Cost: one decode per token, O(T^2) characters, fine for the
    short completions of step-scored tasks; for long ones, compute spans with a tokenizer's
    offset mapping instead and pass them to :func:`char_to_token_ends`.
    """
    ids = list(token_ids)
    full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    spans: list[tuple[int, int]] = []
    end = 0
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=skip_special_tokens)
        new_end = max(end, _common_prefix(prefix, full))
        spans.append((end, new_end))
        end = new_end
    if spans and end < len(full):  # whatever no prefix pinned down belongs to the last token
        spans[-1] = (spans[-1][0], len(full))
    return spans


def char_to_token_ends(
    char_ends: Sequence[int], token_spans: Sequence[tuple[int, int]]
) -> list[int]:
    """Exclusive token end offset for each exclusive character end offset.

    A step ending at character e (its last character is e - 1) ends with the token that holds
    character e - 1, so its token end is the number of tokens that start before e:
    ``#{k : start_k < e}`` over non-empty spans (empty spans count with the next non-empty
    token). A step whose last character shares a token with the next step's first character
    therefore includes that token. e <= 0 gives 0.
    """
    starts: list[int] = []
    # An empty span (a token that adds no character) belongs with the next token that does;
    # give it that token's start so both are counted together.
    next_start = token_spans[-1][1] if token_spans else 0
    for s, e in reversed(token_spans):
        if e > s:
            next_start = s
        starts.append(next_start)
    starts.reverse()
    return [sum(1 for s in starts if s < e) if e > 0 else 0 for e in char_ends]


def steps_to_token_ends(
    steps: Sequence[Sequence[tuple[float | None, int]]],
    token_ids: Sequence[Sequence[int]],
    tokenizer: Decoder,
    *,
    skip_special_tokens: bool = True,
) -> tuple[list[list[float | None]], list[list[int]]]:
    """Split ``(reward, char_end)`` steps into the ``step_rewards`` and token ``step_ends`` that
    ``core.process_advantages`` takes. steps, token_ids: one entry per completion (B)."""
    if len(steps) != len(token_ids):
        raise ValueError(f"{len(steps)} step lists for {len(token_ids)} token id lists")
    rewards: list[list[float | None]] = []
    ends: list[list[int]] = []
    for completion_steps, ids in zip(steps, token_ids, strict=True):
        spans = token_char_spans(ids, tokenizer, skip_special_tokens=skip_special_tokens)
        rewards.append([r for r, _ in completion_steps])
        ends.append(char_to_token_ends([e for _, e in completion_steps], spans))
    return rewards, ends
