"""Configs for the small random Llamas the tests build over the character tokenizer."""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, PreTrainedTokenizerBase


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> LlamaConfig:
    """A 2-layer Llama (vocab 128, hidden 32) whose special-token ids are the tokenizer's.

    The default init is wide (0.5): with 0.02 a tied tiny model only repeats its last input
    token under greedy decoding, and tests could not tell outputs apart.
    """
    settings: dict[str, Any] = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
        "initializer_range": 0.5,
    }
    settings.update(overrides)
    assert len(tokenizer) <= settings["vocab_size"]
    return LlamaConfig(
        **settings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
