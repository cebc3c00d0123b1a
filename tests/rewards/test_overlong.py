"""DAPO soft overlong punishment (eq. 13) against hand values."""

import pytest

from grpo.rewards import RewardFunction, score_completions
from grpo.rewards.overlong import overlong_penalty, soft_overlong_punishment


def test_eq13_by_hand() -> None:
    # L_max = 20, L_cache = 5: no penalty up to 15 tokens, then (15 - n) / 5 down to -1 at 20,
    # and -1 beyond.
    expected = {0: 0.0, 10: 0.0, 15: 0.0, 16: -0.2, 18: -0.6, 20: -1.0, 25: -1.0}
    for n, want in expected.items():
        assert overlong_penalty(n, 20, 5) == pytest.approx(want), n
    lengths = list(expected)
    out = soft_overlong_punishment(
        [""] * 7, [""] * 7, max_completion_length=20, buffer=5, completion_lengths=lengths
    )
    assert out == pytest.approx(list(expected.values()))
    # penalty scales it: 16 tokens with penalty 0.5 -> -0.1; the cap -> -0.5
    half = soft_overlong_punishment(
        ["", ""],
        ["", ""],
        max_completion_length=20,
        buffer=5,
        penalty=0.5,
        completion_lengths=[16, 20],
    )
    assert half == pytest.approx([-0.1, -0.5])


def test_lengths_from_completion_ids_and_priority() -> None:
    ids = [[1] * 14, [1] * 19]  # 14 -> 0; 19 -> (15 - 19) / 5 = -0.8
    out = soft_overlong_punishment(["", ""], ["a", "b"], ids, max_completion_length=20, buffer=5)
    assert out == pytest.approx([0.0, -0.8])
    # completion_lengths wins over completion_ids
    out = soft_overlong_punishment(
        ["", ""], ["a", "b"], ids, max_completion_length=20, buffer=5, completion_lengths=[20, 0]
    )
    assert out == pytest.approx([-1.0, 0.0])


def test_errors() -> None:
    with pytest.raises(ValueError, match="needs token lengths"):
        soft_overlong_punishment([""], ["a"], max_completion_length=20, buffer=5)
    with pytest.raises(ValueError, match="buffer must be"):
        soft_overlong_punishment([""], ["a"], [[1]], max_completion_length=20, buffer=0)
    with pytest.raises(ValueError, match="buffer must be"):
        soft_overlong_punishment([""], ["a"], [[1]], max_completion_length=20, buffer=21)
    with pytest.raises(ValueError, match="1 lengths for 2"):
        soft_overlong_punishment(
            ["", ""], ["a", "b"], max_completion_length=20, buffer=5, completion_lengths=[3]
        )


def test_runs_as_a_configured_reward_function() -> None:
    # The config form: the cap and buffer as the reward's kwargs, lengths passed by the trainer.
    rf = RewardFunction(
        "overlong",
        soft_overlong_punishment,
        kwargs={"max_completion_length": 20, "buffer": 5},
    )
    assert rf.required_columns() == set()
    scores = score_completions([rf], ["p", "p"], ["a", "b"], {"completion_lengths": [10, 17]})
    assert scores.total.tolist() == pytest.approx([0.0, -0.4])
