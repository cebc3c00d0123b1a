"""Self-consistency (majority-vote) reward and the group_ids contract, by hand."""

import pytest

from grpo.rewards import RewardFunction, score_completions
from grpo.rewards.group_rewards import answer_key, group_indices, self_consistency

AGREE, DISAGREE = 1.0, -0.1


def test_majority_ties_and_no_answer() -> None:
    completions = [
        # group 0: 59 twice (59 and 59.0 are the same number), 60 once, one without an answer
        "<answer>59</answer>",
        "<think>...</think><answer>59.0</answer>",
        "<answer>60</answer>",
        "I do not know",
        # group 1: 3 and 4 twice each: a tie for first, no majority
        "<answer>3</answer>",
        "<answer>4</answer>",
        "<answer>3</answer>",
        "<answer>4</answer>",
        # group 2: nobody answers
        "hmm",
        "no idea",
        "",
        "...",
        # group 3: a single answer is the (unique) plurality
        "<answer>x = 7</answer>",
        "?",
        "",
        "...",
    ]
    ids = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    out = self_consistency([""] * 16, completions, group_ids=ids)
    assert out == [
        AGREE, AGREE, DISAGREE, DISAGREE,
        DISAGREE, DISAGREE, DISAGREE, DISAGREE,
        DISAGREE, DISAGREE, DISAGREE, DISAGREE,
        AGREE, DISAGREE, DISAGREE, DISAGREE,
    ]  # fmt: skip


def test_plurality_is_enough_and_rewards_are_configurable() -> None:
    # 2 of 5 is not a strict majority but the unique top count: it wins.
    completions = ["<answer>1</answer>"] * 2 + ["<answer>2</answer>", "<answer>3</answer>", ""]
    out = self_consistency(
        [""] * 5, completions, group_ids=[7] * 5, agree_reward=2.0, disagree_reward=0.0
    )
    assert out == [2.0, 2.0, 0.0, 0.0, 0.0]


def test_groups_need_not_be_contiguous_and_default_to_prompts() -> None:
    completions = ["<answer>1</answer>", "<answer>5</answer>", "<answer>1</answer>",
                   "<answer>6</answer>", "<answer>2</answer>", "<answer>6</answer>"]  # fmt: skip
    interleaved = self_consistency([""] * 6, completions, group_ids=[0, 1, 0, 1, 0, 1])
    # group 0 = rows 0, 2, 4 (1, 1, 2): majority 1; group 1 = rows 1, 3, 5 (5, 6, 6): majority 6
    assert interleaved == [AGREE, DISAGREE, AGREE, AGREE, DISAGREE, AGREE]
    # without group_ids, the prompt text decides (chat prompts included)
    chat_a = [{"role": "user", "content": "a"}]
    prompts = [chat_a, "b", chat_a, "b", chat_a, "b"]
    assert self_consistency(prompts, completions) == interleaved
    assert group_indices(prompts) == [[0, 2, 4], [1, 3, 5]]
    with pytest.raises(ValueError, match="one group id per completion"):
        self_consistency([""] * 2, ["a", "b"], group_ids=[0])


def test_answer_key() -> None:
    assert answer_key("<answer>1,234</answer>") == answer_key("<answer>$1234.0</answer>")
    assert answer_key("x <answer>0.30000000000000004</answer>") == ("number", 0.3)
    assert answer_key("<answer> B  </answer>") == answer_key("<answer>B</answer>") == ("text", "B")
    assert answer_key("no number") is None


def test_receives_group_ids_through_score_completions() -> None:
    # The trainer adds group_ids to the keyword columns; functions that take it (by name or
    # **kwargs) get it, others do not.
    rf = RewardFunction("consistency", self_consistency)
    assert rf.required_columns() == set()
    scores = score_completions(
        [rf],
        ["p"] * 4,
        ["<answer>2</answer>", "<answer>2</answer>", "<answer>3</answer>", "<answer>4</answer>"],
        {"group_ids": [0, 0, 1, 1]},
    )
    # group 0 agrees on 2; group 1 ties 3 vs 4
    assert scores.total.tolist() == pytest.approx([AGREE, AGREE, DISAGREE, DISAGREE])
