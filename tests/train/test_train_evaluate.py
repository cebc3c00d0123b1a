"""pass@k by hand, and evaluate_accuracy against an engine whose texts are known."""

from __future__ import annotations

import math

import pytest

from grpo.rollout.base import Completion, SamplingSettings
from grpo.train.evaluate import EvalResult, evaluate_accuracy, pass_at_k


def test_pass_at_k_hand_values():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the fraction correct: 3/8
    assert pass_at_k(8, 3, 1) == pytest.approx(0.375)
    # no correct sample: 0
    assert pass_at_k(5, 0, 3) == 0.0
    # n - c < k: every k-subset holds a correct sample
    assert pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(4, 4, 4) == 1.0


@pytest.mark.parametrize("k", [0, 5])
def test_pass_at_k_rejects_bad_k(k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(4, 1, k)


class FakeEngine:
    """Returns scripted completion texts per prompt id; records the settings it was given."""

    def __init__(self, texts: dict[int, list[str]]):
        self.texts = texts
        self.calls: list[SamplingSettings] = []

    def generate(self, prompt_token_ids, settings):
        self.calls.append(settings)
        out = []
        for ids in prompt_token_ids:
            texts = self.texts[ids[0]][: settings.n]
            assert len(texts) == settings.n
            out.append(
                [Completion(token_ids=[7] * len(t), text=t, finish_reason="stop") for t in texts]
            )
        return out

    def sync_weights(self, model):  # pragma: no cover - not used
        pass


ROWS = [
    {"prompt": "Q: 1+2\n", "answer": "3"},
    {"prompt": "Q: 5-1\n", "answer": "4"},
    {"prompt": "Q: 10+10\n", "answer": "20"},
]
IDS = [[0], [1], [2]]


def test_greedy_accuracy():
    engine = FakeEngine(
        {
            0: ["<answer>3</answer>"],  # right
            1: ["<answer>5</answer>"],  # wrong
            2: ["<think>10+10=20</think><answer>20</answer>"],  # right
        }
    )
    result = evaluate_accuracy(engine, IDS, ROWS, max_new_tokens=16, stop=("</answer>",))
    assert isinstance(result, EvalResult)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.pass_at_k == {}
    assert result.num_prompts == 3
    assert result.completions == [
        "<answer>3</answer>",
        "<answer>5</answer>",
        "<think>10+10=20</think><answer>20</answer>",
    ]
    # token counts of the fake completions (one per character): 18, 18, 42
    assert result.mean_completion_tokens == pytest.approx((18 + 18 + 42) / 3)
    (s,) = engine.calls
    assert (s.n, s.temperature, s.top_p, s.max_new_tokens) == (1, 0.0, 1.0, 16)
    assert s.stop == ("</answer>",)
    metrics = result.as_metrics()
    assert metrics["eval/accuracy"] == pytest.approx(2 / 3)
    assert set(metrics) == {"eval/accuracy", "eval/completion_len"}


def test_sampled_accuracy_and_pass_at_k():
    right = ["<answer>3</answer>", "<answer>4</answer>", "<answer>20</answer>"]
    wrong = "<answer>0</answer>"
    engine = FakeEngine(
        {
            0: [right[0], wrong, wrong, wrong],  # c = 1
            1: [wrong, wrong, wrong, wrong],  # c = 0
            2: [right[2], right[2], wrong, right[2]],  # c = 3
        }
    )
    result = evaluate_accuracy(
        engine, IDS, ROWS, max_new_tokens=8, samples=4, ks=(1, 2, 4), temperature=0.8, seed=5
    )
    # 4 of 12 samples correct
    assert result.accuracy == pytest.approx(4 / 12)
    # pass@1 = mean(c/n) = (1/4 + 0 + 3/4) / 3 = 1/3
    assert result.pass_at_k[1] == pytest.approx(1 / 3)
    # pass@2 = (0.5 + 0 + 1) / 3: prompt 0 gives 1 - C(3,2)/C(4,2) = 0.5, prompt 2 has n-c=1 < 2
    assert result.pass_at_k[2] == pytest.approx(0.5)
    # pass@4 = (1 + 0 + 1) / 3
    assert result.pass_at_k[4] == pytest.approx(2 / 3)
    assert result.completions == [right[0], wrong, right[2]]
    (s,) = engine.calls
    assert (s.n, s.temperature, s.seed) == (4, 0.8, 5)
    metrics = result.as_metrics("heldout")
    assert metrics["heldout/pass@2"] == pytest.approx(0.5)


def test_other_prompt_column_and_missing_answer():
    rows = [{"question": "what is 2+2?", "answer": 4}]
    engine = FakeEngine({0: ["it is 4"]})
    result = evaluate_accuracy(engine, [[0]], rows, prompt_column="question", max_new_tokens=4)
    assert result.accuracy == 1.0
    with pytest.raises(ValueError, match="answer"):
        evaluate_accuracy(engine, [[0]], [{"prompt": "x"}], max_new_tokens=4)


def test_pass_at_k_matches_brute_force():
    """pass@k equals the fraction of k-subsets of the n samples that hold a correct one."""
    from itertools import combinations

    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(samples, k))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert math.isclose(pass_at_k(n, c, k), want), (n, c, k)
