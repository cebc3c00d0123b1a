"""Group-level rewards: functions whose score for one completion depends on the others of its
group (the G completions of the same prompt).

Contract. The trainer passes ``group_ids: list[int]`` (one per completion, aligned with
``completions``; completions with the same id are one group) as a keyword to every reward
function that accepts it (names it, or takes ``**kwargs``). A group-level function scores each
group on its own and returns the usual one value per completion. Ids need not be contiguous or
sorted. When ``group_ids`` is missing (a caller that does not know the contract, e.g. TRL),
completions with the same prompt text form a group, which is the same thing whenever each prompt
appears once per batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

from grpo.rewards.extract import completion_text, extract_answer, parse_number

__all__ = ["answer_key", "group_indices", "self_consistency"]


def group_indices(
    prompts: Sequence[Any], group_ids: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Completion indices per group, groups in order of first appearance.

    ``group_ids[i]`` names the group of completion i; without it, the prompt text does
    (``completion_text(prompts[i])``, so chat prompts work too).
    """
    if group_ids is None:
        keys: Sequence[Hashable] = [completion_text(p) for p in prompts]
    else:
        if len(group_ids) != len(prompts):
            raise ValueError(
                f"group_ids has {len(group_ids)} values for {len(prompts)} completions; give one "
                "group id per completion"
            )
        keys = group_ids
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return list(groups.values())


def answer_key(text: str) -> tuple[str, Any] | None:
    """What two completions must share to "give the same answer", or None for no answer.

    The final-answer span is found by ``extract_answer``. When the span reads as one number
    (``parse_number``), the key is that number, rounded to 12 significant digits so float noise
    ("0.30000000000000004") and formatting ("1,234", "$59", "59.0") do not split votes. Otherwise
    the key is the span with its whitespace collapsed (exact, case-sensitive).
    """
    span = extract_answer(text)
    if span is None:
        return None
    value = parse_number(span)
    if value is not None:
        return ("number", float(f"{value:.12g}"))
    normalised = " ".join(span.split())
    return ("text", normalised) if normalised else None


def self_consistency(
    prompts: list[Any],
    completions: list[Any],
    group_ids: Sequence[Hashable] | None = None,
    *,
    agree_reward: float = 1.0,
    disagree_reward: float = -0.1,
    **kwargs: Any,
) -> list[float | None]:
    """Reward agreement with the group's majority answer; no ground truth needed.

    Self-consistency (Wang et al. 2022, arXiv 2203.11171) takes the most frequent final answer
    of several samples as the prediction; used as an RL reward (TTRL, Zuo et al. 2025,
    arXiv 2504.16084) each sample scores by whether it agrees with that majority.

    Per group (see the module docstring for ``group_ids``):

    - each completion's answer is ``answer_key(completion_text(c))`` (numbers compare by value);
    - the majority answer is the answer with the most votes (a plurality: it need not exceed
      half of the group) among completions that have an answer;
    - completions with that answer get ``agree_reward``, every other one ``disagree_reward``.

    Defined edge cases:

    - no answer: a completion whose answer cannot be extracted does not vote and gets
      ``disagree_reward`` (it does not agree with anything; returning None instead would hide
      it from the advantages and never teach the model to answer);
    - ties: when two or more answers share the top count there is no majority, and every
      completion of the group gets ``disagree_reward`` (equal rewards: the group carries no
      signal; the reward does not guess which of the tied answers is right);
    - a group in which no completion has an answer: all get ``disagree_reward``.

    Caveat: the majority is not the truth. A policy can raise this reward by agreeing on a
    wrong answer; combine it with a verifier where one exists, or watch accuracy on held-out
    data.
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"self_consistency: {len(prompts)} prompts for {len(completions)} completions"
        )
    keys = [answer_key(completion_text(c)) for c in completions]
    scores: list[float | None] = [float(disagree_reward)] * len(completions)
    for members in group_indices(prompts, group_ids):
        votes = Counter(keys[i] for i in members if keys[i] is not None)
        ranked = votes.most_common(2)
        if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
            continue  # no answer at all, or a tie for first: no majority
        majority = ranked[0][0]
        for i in members:
            if keys[i] == majority:
                scores[i] = float(agree_reward)
    return scores
