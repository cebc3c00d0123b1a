"""The character-level tokenizer of the shipped tiny model, as a transformers fast tokenizer.

One token per printable ASCII character, plus the four format tags as whole tokens, so the
tiny model's completions (``<think>47+8=55 ...</think><answer>59</answer>``) stay short. The
shipped model's ``tokenizer.json`` was written by this function; the benchmarks and tests use
it to build models of other sizes with the same vocabulary.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
FORMAT_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    # BPE with no merges: every character stays a token; Fuse joins them back without spaces.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.add_tokens(FORMAT_TAGS)  # ordinary (non-special) tokens: they survive skip_special_tokens
    fast.padding_side = "left"
    return fast
