"""Prompt rows and batches for training (grpo.train.task_data) and the arithmetic task."""

from __future__ import annotations

import pytest

from grpo.data.arithmetic import (
    ArithmeticProblem,
    generate_problems,
    problem_rows,
    split_of,
)
from grpo.train.task_data import load_rows, tokenize_prompts

# ---- load_rows / tokenize_prompts --------------------------------------------------------------


def _arith_rows(seed: int, n_train: int = 300, n_eval: int = 100):
    return load_rows(
        task="arithmetic",
        train_path=None,
        eval_path=None,
        split="train",
        prompt_column="prompt",
        num_train_prompts=n_train,
        num_eval_prompts=n_eval,
        seed=seed,
        required_columns=["answer"],
    )


def test_arithmetic_rows_train_and_eval_are_disjoint():
    train, evals = _arith_rows(seed=0)
    assert len(train) == 300 and len(evals) == 100
    train_prompts = {r["prompt"] for r in train}
    eval_prompts = {r["prompt"] for r in evals}
    assert len(train_prompts) == 300 and len(eval_prompts) == 100
    assert not train_prompts & eval_prompts
    for r in train + evals:
        assert set(r) == {"prompt", "answer"}
    # the held-out set does not depend on the run's seed, the training prompts do
    train1, evals1 = _arith_rows(seed=1)
    assert evals1 == evals
    assert train1 != train
    assert not {r["prompt"] for r in train1} & eval_prompts


def test_load_rows_gsm8k_needs_a_path():
    with pytest.raises(ValueError, match="train_path"):
        load_rows(
            task="gsm8k",
            train_path=None,
            eval_path=None,
            split="train",
            prompt_column="prompt",
            num_train_prompts=1,
            num_eval_prompts=1,
            seed=0,
            required_columns=[],
        )


def test_load_rows_from_files(tmp_path):
    import json

    train = tmp_path / "train.jsonl"
    evals = tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps({"q": f"t{i}", "answer": i}) + "\n" for i in range(4)))
    evals.write_text("".join(json.dumps({"q": f"e{i}", "answer": i}) + "\n" for i in range(5)))
    tr, ev = load_rows(
        task="file",
        train_path=str(train),
        eval_path=str(evals),
        split="train",
        prompt_column="q",
        num_train_prompts=1,
        num_eval_prompts=3,
        seed=0,
        required_columns=["answer"],
    )
    assert [r["q"] for r in tr] == ["t0", "t1", "t2", "t3"]
    assert [r["q"] for r in ev] == ["e0", "e1", "e2"]  # truncated to num_eval_prompts


def test_tokenize_prompts_plain_strings(tokenizer):
    rows = [{"prompt": "Q: 1+2\n"}, {"prompt": "Q: 30-4+5\n"}]
    ids = tokenize_prompts(rows, tokenizer, prompt_column="prompt", system_prompt=None)
    assert [len(i) for i in ids] == [7, 10]  # one token per character, no template
    assert [tokenizer.decode(i) for i in ids] == ["Q: 1+2\n", "Q: 30-4+5\n"]


# ---- the arithmetic task -----------------------------------------------------------------------


def test_worked_completion_hand_example():
    p = ArithmeticProblem((23, 45, 17, 8), ("+", "-", "+"))
    assert p.expression == "23+45-17+8"
    assert p.prompt == "Q: 23+45-17+8\n"
    assert p.steps() == [(23, "+", 45, 68), (68, "-", 17, 51), (51, "+", 8, 59)]
    assert p.answer == 59
    assert p.worked_completion() == "<think>23+45=68 68-17=51 51+8=59</think><answer>59</answer>"
    assert p.direct_completion() == "<answer>59</answer>"


def test_evaluation_is_left_to_right():
    # 50-20+5: left to right (50-20)+5 = 35; grouping the right side would give 50-25 = 25
    assert ArithmeticProblem((50, 20, 5), ("-", "+")).answer == 35
    # 10-5-3: (10-5)-3 = 2, not 10-(5-3) = 8
    p = ArithmeticProblem((10, 5, 3), ("-", "-"))
    assert p.answer == 2
    assert p.worked_completion() == "<think>10-5=5 5-3=2</think><answer>2</answer>"


def test_problem_rows_format():
    p = ArithmeticProblem((1, 2, 3), ("+", "+"))
    assert problem_rows([p]) == [{"prompt": "Q: 1+2+3\n", "answer": "6"}]


def test_split_of_is_stable():
    # pinned: sha256(text) % 100 decides, so these never move between splits
    assert split_of("1+1-1") == "rl"
    assert split_of("1+1-2") == "warmup"
    assert split_of("1+1-8") == "eval"
    assert split_of("23+45-17+8") == "rl"
    assert [split_of("1+2-7") for _ in range(3)] == ["eval"] * 3


def test_split_proportions():
    exprs = [f"{a}+{b}-{c}" for a in range(1, 30) for b in range(1, 30) for c in range(1, 5)]
    counts = {s: 0 for s in ("warmup", "rl", "eval")}
    for e in exprs:
        counts[split_of(e)] += 1
    n = len(exprs)  # 3364; buckets are 60/30/10 out of 100
    assert abs(counts["warmup"] / n - 0.6) < 0.04
    assert abs(counts["rl"] / n - 0.3) < 0.04
    assert abs(counts["eval"] / n - 0.1) < 0.03


@pytest.mark.parametrize("split", ["warmup", "rl", "eval"])
def test_generate_problems_only_from_split_and_never_negative(split):
    problems = generate_problems(split, 200, seed=5)
    assert len(problems) == 200
    assert len({p.expression for p in problems}) == 200  # distinct
    for p in problems:
        assert split_of(p.expression) == split
        assert 3 <= len(p.numbers) <= 4 and len(p.ops) == len(p.numbers) - 1
        assert all(1 <= n <= 99 for n in p.numbers)
        assert all(res >= 0 for _, _, _, res in p.steps())
    assert generate_problems(split, 200, seed=5) == problems
    assert generate_problems(split, 200, seed=6) != problems


def test_generate_problems_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        generate_problems("test", 3)  # type: ignore[arg-type]
