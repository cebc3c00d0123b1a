"""Loading models and tokenizers, the reference copy, and the precision choice."""

from __future__ import annotations

import pytest
import torch

from grpo.train.models import (
    autocast_dtype,
    frozen_reference,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)


def test_resolve_model_path_passes_other_names_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_unknown_builtin_model_names_the_key():
    with pytest.raises(FileNotFoundError, match=r"model\.name_or_path.*'no-such-model'"):
        resolve_model_path("builtin:no-such-model")


def test_autocast_dtype_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("float32", cpu) is None
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)


def test_load_policy_is_fp32(tiny_model_dir):
    model = load_policy(str(tiny_model_dir), torch.device("cpu"))
    assert model.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())


def test_load_tokenizer_pads_left_and_falls_back_to_eos(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.padding_side == "left"
    assert tok.pad_token == "<pad>"
    # a tokenizer saved without a pad token gets EOS as its pad token
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again.pad_token == again.eos_token == "</s>"
    assert again.pad_token_id == again.eos_token_id


def test_frozen_reference_is_a_frozen_copy(tiny_model):
    ref = frozen_reference(tiny_model, torch.bfloat16)
    assert ref is not tiny_model
    assert ref.dtype == torch.bfloat16 and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())  # the policy is untouched
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    a, b = next(tiny_model.parameters()), next(ref.parameters())
    assert not torch.allclose(a.to(torch.bfloat16), b)  # separate storage
    assert frozen_reference(tiny_model, None).dtype == torch.float32
