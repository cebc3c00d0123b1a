"""The `reward_model` reward, on a tiny randomly initialised classifier saved by the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama_config

from grpo.data.char_tokenizer import build_char_tokenizer
from grpo.rewards import RewardFunction, RewardModel, RewardSpecError, score_completions

CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi", "Count to three, slowly please."]
COMPLETIONS = ["4", "Blue, or maybe a dark green.", "hi!", "one... two... three"]


def _save_classifier(path: Path, *, num_labels: int = 1, chat: bool = False) -> Path:
    from transformers import LlamaForSequenceClassification

    tokenizer = build_char_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = tiny_llama_config(
        tokenizer,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        num_labels=num_labels,
        initializer_range=0.5,  # spread-out scores, so that a wrong one cannot pass by chance
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_classifier(tmp_path_factory.mktemp("rm-plain"))


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_classifier(tmp_path_factory.mktemp("rm-chat"), chat=True)


def _direct_scores(rm: RewardModel, texts: list[str], *, special: bool) -> list[float]:
    """One unpadded forward pass per text, straight through the model."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = rm.tokenizer(text, add_special_tokens=special)["input_ids"]
            ids = ids[-rm.max_length :]
            out.append(rm.model(input_ids=torch.tensor([ids])).logits[0, rm.label].item())
    return out


def test_scores_equal_a_direct_forward_pass(plain_dir: Path) -> None:
    rm = RewardModel(str(plain_dir), batch_size=4, dtype="float32", device="cpu")
    assert not rm.chat_template  # the tokenizer has none, so the text is prompt + completion
    scores = rm(PROMPTS, COMPLETIONS)
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert scores == pytest.approx(_direct_scores(rm, texts, special=True), abs=1e-5)
    # A random model still tells the texts apart: the check above is not trivially true.
    assert len({round(s, 3) for s in scores}) == len(scores)
    assert not any(p.requires_grad for p in rm.model.parameters())


def test_batching_and_padding_do_not_change_scores(plain_dir: Path) -> None:
    one = RewardModel(str(plain_dir), batch_size=1, dtype="float32", device="cpu")
    three = RewardModel(str(plain_dir), batch_size=3, dtype="float32", device="cpu")
    prompts, completions = PROMPTS * 2, COMPLETIONS + COMPLETIONS[::-1]
    assert three(prompts, completions) == pytest.approx(one(prompts, completions), abs=1e-5)


def test_chat_template_is_used(chat_dir: Path) -> None:
    rm = RewardModel(str(chat_dir), batch_size=2, dtype="float32", device="cpu")
    assert rm.chat_template
    chat_prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    prompts = [PROMPTS[0], chat_prompt]
    completions = ["4", [{"role": "assistant", "content": "4"}]]
    assert rm.text(PROMPTS[0], "4") == "<s>user: What is 2+2?\n<s>assistant: 4\n"
    assert rm.text(chat_prompt, completions[1]) == (
        "<s>system: Be brief.\n<s>user: What is 2+2?\n<s>assistant: 4\n"
    )
    texts = [rm.text(p, c) for p, c in zip(prompts, completions, strict=True)]
    # The template writes <s> itself; the tokenizer must not add a second one.
    assert rm(prompts, completions) == pytest.approx(
        _direct_scores(rm, texts, special=False), abs=1e-5
    )
    plain = RewardModel(str(chat_dir), chat_template=False, dtype="float32", device="cpu")
    assert plain.text(PROMPTS[0], "4") == PROMPTS[0] + "4"


def test_long_sequences_keep_their_end(plain_dir: Path) -> None:
    rm = RewardModel(str(plain_dir), max_length=16, dtype="float32", device="cpu")
    long_text = "a" * 40 + "the end"
    assert rm(["x"], [long_text]) == pytest.approx(
        _direct_scores(rm, ["x" + long_text], special=True), abs=1e-5
    )


def test_bf16(plain_dir: Path) -> None:
    fp32 = RewardModel(str(plain_dir), dtype="float32", device="cpu")
    bf16 = RewardModel(str(plain_dir), dtype="bfloat16", device="cpu")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    scores = bf16(PROMPTS, COMPLETIONS)
    assert all(isinstance(s, float) for s in scores)
    # bf16 keeps 8 bits of mantissa: close to fp32, not equal.
    assert scores == pytest.approx(fp32(PROMPTS, COMPLETIONS), abs=0.1, rel=0.05)
    auto = RewardModel(str(plain_dir), device="cpu")
    assert next(auto.model.parameters()).dtype in (torch.bfloat16, torch.float32)


def test_builds_from_config_entry(plain_dir: Path) -> None:
    # The trainer's path: {name: reward_model, kwargs: {path: ..., batch_size: 2}}.
    rf = RewardFunction.from_spec(
        "reward_model", weight=0.5, kwargs={"path": str(plain_dir), "batch_size": 2}
    )
    assert isinstance(rf.fn, RewardModel) and rf.fn.batch_size == 2 and rf.kwargs == {}
    assert rf.required_columns() == set()
    scores = score_completions([rf], PROMPTS, COMPLETIONS, {"answer": ["1"] * 4})
    assert scores.per_function["reward_model"].tolist() == pytest.approx(
        rf.fn(PROMPTS, COMPLETIONS), abs=1e-3
    )
    assert scores.total.tolist() == pytest.approx(
        [0.5 * s for s in scores.per_function["reward_model"].tolist()], abs=1e-6
    )


def test_config_mistakes_name_the_reward(plain_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RewardSpecError, match=r"'reward_model': building RewardModel"):
        RewardFunction.from_spec("reward_model", kwargs={})  # no path
    with pytest.raises(RewardSpecError, match="batch_size must be a positive integer"):
        RewardFunction.from_spec("reward_model", kwargs={"path": str(plain_dir), "batch_size": 0})
    several = _save_classifier(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(ValueError, match="has 2 outputs; say which one"):
        RewardModel(str(several), device="cpu")
    rm = RewardModel(str(several), label=1, dtype="float32", device="cpu")
    assert rm(["a"], ["b"]) == pytest.approx(
        [rm.model(**rm.tokenizer(["ab"], return_tensors="pt")).logits[0, 1].item()], abs=1e-5
    )
