import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from grpo.rewards import RewardFunction, score_completions
from grpo.rewards.builtin import accuracy, format_reward, reasoning_length
from grpo.rewards.errors import RewardError, RewardSpecError


def returns(values: Any) -> Callable[..., Any]:
    """A reward function that returns `values` whatever it is given."""

    def fn(prompts: list[Any], completions: list[Any], **kwargs: Any) -> Any:
        return values

    return fn


def nan_equal(actual: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(actual, torch.tensor(expected), equal_nan=True, atol=0, rtol=1e-6)


PROMPTS4 = ["p0", "p1", "p2", "p3"]
COMPLETIONS4 = ["c0", "c1", "c2", "c3"]


def test_weights_none_and_all_none() -> None:
    a = RewardFunction("a", returns([1.0, None, 0.0, None]))
    b = RewardFunction("b", returns([0.5, 2.0, None, None]), weight=0.5)
    scores = score_completions([a, b], PROMPTS4, COMPLETIONS4)

    # total = 1.0*a + 0.5*b over the values that are not None:
    # [1 + 0.25, 0 + 1.0, 0 + 0, every function None -> NaN]
    assert scores.total.dtype == torch.float32 and scores.total.shape == (4,)
    assert nan_equal(scores.total, [1.25, 1.0, 0.0, math.nan])
    assert nan_equal(scores.per_function["a"], [1.0, math.nan, 0.0, math.nan])
    assert nan_equal(scores.per_function["b"], [0.5, 2.0, math.nan, math.nan])
    assert scores.scored.tolist() == [True, True, True, False]

    m = scores.metrics()
    # reward over [1.25, 1.0, 0.0]: mean 0.75; deviations 0.5, 0.25, -0.75;
    # population variance (0.25 + 0.0625 + 0.5625) / 3 = 0.875 / 3.
    assert m["reward/mean"] == pytest.approx(0.75)
    assert m["reward/std"] == pytest.approx(math.sqrt(0.875 / 3))
    assert m["reward/none_frac"] == 0.25
    # a over [1, 0]: mean 0.5, std 0.5; b over [0.5, 2]: mean 1.25, std 0.75 (raw, unweighted).
    assert m["rewards/a/mean"] == pytest.approx(0.5)
    assert m["rewards/a/std"] == pytest.approx(0.5)
    assert m["rewards/a/none_frac"] == 0.5
    assert m["rewards/b/mean"] == pytest.approx(1.25)
    assert m["rewards/b/std"] == pytest.approx(0.75)
    assert m["rewards/b/none_frac"] == 0.5
    assert set(m) == {
        "reward/mean",
        "reward/std",
        "reward/none_frac",
        *(f"rewards/{n}/{s}" for n in "ab" for s in ("mean", "std", "none_frac", "errors")),
    }


def test_negative_and_zero_weights() -> None:
    a = RewardFunction("a", returns([1.0, 0.0]), weight=-2.0)
    b = RewardFunction("b", returns([3.0, None]), weight=0.0)
    scores = score_completions([a, b], ["p", "p"], ["x", "y"])
    # A zero-weight value still counts as "scored", so the total is a number, not NaN.
    assert scores.total.tolist() == [-2.0, 0.0]


def test_a_function_that_never_scores() -> None:
    scores = score_completions(
        [RewardFunction("none", returns([None, None]))], ["p", "p"], ["a", "b"]
    )
    assert torch.isnan(scores.total).all()
    m = scores.metrics()
    assert math.isnan(m["reward/mean"]) and math.isnan(m["rewards/none/mean"])
    assert m["rewards/none/none_frac"] == 1.0


def test_builtins_with_columns_and_kwargs() -> None:
    completions = [
        "<think>abcde</think><answer>18</answer>",
        "<think>ab</think><answer>17</answer>",
        "18",
    ]
    fns = [
        RewardFunction("accuracy", accuracy),
        RewardFunction("format", format_reward, weight=0.5),
        RewardFunction("length", reasoning_length, weight=0.1, kwargs={"target_chars": 10}),
    ]
    columns = {"answer": ["18", "18", "18"], "id": [1, 2, 3]}
    scores = score_completions(fns, ["q"] * 3, completions, columns)
    assert nan_equal(scores.per_function["accuracy"], [1.0, 0.0, 1.0])
    assert nan_equal(scores.per_function["format"], [1.0, 1.0, 0.0])
    assert nan_equal(scores.per_function["length"], [0.5, 0.2, 0.0])
    # 1 + 0.5 + 0.05; 0 + 0.5 + 0.02; 1 + 0 + 0
    assert nan_equal(scores.total, [1.55, 0.52, 1.0])


def test_function_without_var_kwargs_gets_only_what_it_names() -> None:
    seen: dict[str, Any] = {}

    def strict(completions: list[str], answer: list[str]) -> list[float]:
        seen["args"] = (completions, answer)
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    scores = score_completions(
        [RewardFunction("strict", strict)],
        ["p", "p"],
        ["1", "2"],
        {"answer": ["1", "1"], "x": [0, 0]},
    )
    assert scores.total.tolist() == [1.0, 0.0]
    assert seen["args"] == (["1", "2"], ["1", "1"])


def test_bool_and_tensor_values_are_numbers() -> None:
    fns = [
        RewardFunction("bools", returns([True, False])),
        RewardFunction("scalars", returns([torch.tensor(0.5), torch.tensor(2)])),
        RewardFunction("tensor", returns(torch.tensor([1.0, 3.0]))),
    ]
    scores = score_completions(fns, ["p", "p"], ["a", "b"])
    assert scores.per_function["bools"].tolist() == [1.0, 0.0]
    assert scores.total.tolist() == [2.5, 5.0]


def test_missing_required_column() -> None:
    with pytest.raises(RewardError) as err:
        score_completions([RewardFunction("acc", accuracy)], ["p"], ["1"], {"label": ["1"]})
    assert "reward function 'acc' needs columns ['answer']" in str(err.value)
    assert "['label']" in str(err.value)
    assert err.value.function == "acc"


def test_wrong_number_of_values() -> None:
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        score_completions([RewardFunction("short", returns([1.0]))], ["p", "p"], ["a", "b"])


@pytest.mark.parametrize("bad", ["1.0", [1.0], {"r": 1}])
def test_non_number_names_function_row_and_prompt(bad: object) -> None:
    fn = RewardFunction("picky", returns([0.0, bad]))
    with pytest.raises(RewardError) as err:
        score_completions([fn], ["first prompt", "second prompt"], ["a", "b"], row_ids=[10, 11])
    message = str(err.value)
    assert f"reward function 'picky' returned {bad!r}" in message
    assert "completion 1 of the batch (dataset row 11)" in message
    assert "'second prompt'" in message
    assert "must be numbers" in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(bad: float) -> None:
    with pytest.raises(RewardError) as err:
        score_completions([RewardFunction("wild", returns([bad]))], ["p"], ["a"])
    assert "reward function 'wild' returned" in str(err.value)
    assert "return None" in str(err.value)


def test_not_a_list() -> None:
    with pytest.raises(RewardError, match="'scalar' returned a float; it must return a list"):
        score_completions([RewardFunction("scalar", returns(1.0))], ["p"], ["a"])
    with pytest.raises(RewardError, match="'text' returned a str"):
        score_completions([RewardFunction("text", returns("1"))], ["p"], ["a"])


def test_exception_names_function_batch_and_prompt() -> None:
    def broken(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        raise KeyError("missing_key")

    chat_prompt = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is " + "very " * 100 + "long?"},
    ]
    with pytest.raises(RewardError) as err:
        score_completions(
            [RewardFunction("broken", broken)],
            [chat_prompt, chat_prompt],
            ["a", "b"],
            row_ids=[64, 65],
        )
    message = str(err.value)
    assert "reward function 'broken' raised KeyError: 'missing_key'" in message
    assert "on completion 0 of the batch (dataset row 64)" in message
    # The preview shows the user's question (the last message), truncated to 200 characters.
    assert "prompt: 'What is very very" in message
    assert "...'" in message and "be brief" not in message
    assert isinstance(err.value.__cause__, KeyError)
    assert err.value.function == "broken"


def test_batch_validation() -> None:
    a = RewardFunction("a", returns([1.0]))
    with pytest.raises(ValueError, match="no reward functions"):
        score_completions([], ["p"], ["c"])
    with pytest.raises(ValueError, match=r"names must be unique, \['a'\] repeat"):
        score_completions([a, RewardFunction("a", returns([1.0]))], ["p"], ["c"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        score_completions([a], ["p", "q"], ["c"])
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 1 completions"):
        score_completions([a], ["p"], ["c"], {"answer": ["1", "2"]})
    with pytest.raises(ValueError, match="may not be called 'completions'"):
        score_completions([a], ["p"], ["c"], {"completions": ["x"]})


def test_kwarg_clashing_with_column() -> None:
    rf = RewardFunction("len", reasoning_length, kwargs={"target_chars": 5})
    with pytest.raises(RewardError, match=r"'len': its kwargs \['target_chars'\] have the same"):
        score_completions([rf], ["p"], ["c"], {"target_chars": [3]})


def test_empty_batch() -> None:
    scores = score_completions([RewardFunction("a", returns([]))], [], [])
    assert scores.total.shape == (0,)
    assert math.isnan(scores.metrics()["reward/mean"])


def test_reward_function_validation() -> None:
    with pytest.raises(RewardSpecError, match="weight must be a number"):
        RewardFunction("a", accuracy, weight="1")  # type: ignore[arg-type]
    with pytest.raises(RewardSpecError, match="weight must be finite"):
        RewardFunction("a", accuracy, weight=math.nan)
    with pytest.raises(RewardSpecError, match="non-empty string"):
        RewardFunction("", accuracy)
    with pytest.raises(RewardSpecError, match="may not set \\['prompts'\\]"):
        RewardFunction("a", accuracy, kwargs={"prompts": []})

    def strict(prompts: list[Any], completions: list[Any], scale: float = 1.0) -> list[float]:
        return [scale] * len(completions)

    with pytest.raises(RewardSpecError, match=r"kwargs \['scael'\] are not parameters"):
        RewardFunction("s", strict, kwargs={"scael": 2.0})
    assert score_completions(
        [RewardFunction("s", strict, kwargs={"scale": 2.0})], ["p"], ["c"]
    ).total.tolist() == [2.0]


def test_from_spec_and_required_columns() -> None:
    rf = RewardFunction.from_spec("accuracy", weight=2.0)
    assert (rf.name, rf.fn, rf.weight) == ("accuracy", accuracy, 2.0)
    assert rf.required_columns() == {"answer"}
    rf = RewardFunction.from_spec(
        "grpo.rewards.builtin:reasoning_length", kwargs={"target_chars": 9}
    )
    assert rf.name == "reasoning_length" and rf.kwargs == {"target_chars": 9}
    assert RewardFunction.from_spec("format", name="fmt").name == "fmt"

    def needs(prompts: list[Any], completions: list[Any], answer: Any, unit: Any) -> list[float]:
        return [0.0] * len(completions)

    assert RewardFunction("n", needs, kwargs={"unit": "cm"}).required_columns() == {"answer"}
