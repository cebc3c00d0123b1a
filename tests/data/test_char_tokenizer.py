"""The shipped model's tokenizer is the one the package builds; round trips are exact."""

from __future__ import annotations

from transformers import AutoTokenizer

from grpo.data.char_tokenizer import FORMAT_TAGS, build_char_tokenizer
from grpo.train.models import resolve_model_path


def test_shipped_tokenizer_matches_the_builder():
    shipped = AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny-arith"))
    built = build_char_tokenizer()
    assert shipped.get_vocab() == built.get_vocab()
    assert (shipped.pad_token, shipped.eos_token) == (built.pad_token, built.eos_token)


def test_tags_are_single_tokens_and_text_round_trips():
    tok = build_char_tokenizer()
    text = "Q: 47+8-5\n<think>47+8=55 55-5=50</think><answer>50</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # 10 prompt characters, 1 tag, 15 characters of working, 2 tags, "50", 1 tag
    assert len(ids) == 10 + 1 + 15 + 2 + 2 + 1
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in FORMAT_TAGS)
    assert tok.decode(ids) == text
