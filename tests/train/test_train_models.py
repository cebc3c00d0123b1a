"""Loading models and tokenizers, the reference copy, and the precision choice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from grpo.errors import ModelError
from grpo.train.models import (
    autocast_dtype,
    frozen_reference,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)


def _fake_hub_cache(cache: Path, repo_id: str) -> None:
    """The Hugging Face cache layout of a repo holding only config.json (what hf_hub_download
    writes): refs/main names a snapshot folder that holds the file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_model_directories_and_cached_hub_ids_pass_through(tiny_model_dir, tmp_path, monkeypatch):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "Org/Cached-0.5B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a cached model needs no network
    assert resolve_model_path("Org/Cached-0.5B") == "Org/Cached-0.5B"


def test_unknown_builtin_model_names_the_key():
    with pytest.raises(ModelError, match=r"model\.name_or_path.*'no-such-model'.*tiny-arith"):
        resolve_model_path("builtin:no-such-model")


def test_a_missing_directory_is_named_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("./my-model", str(tmp_path / "gone"), "runs/x/final"):
        with pytest.raises(ModelError, match="does not exist") as err:
            resolve_model_path(name)
        assert name in str(err.value) and "Repo id" not in str(err.value)


def test_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="has no config.json") as err:
        resolve_model_path(str(tmp_path))
    assert f"its trained model is {tmp_path / 'final'}" in str(err.value)  # a run directory
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_an_uncached_hub_id_fails_at_once_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set") as err:
        resolve_model_path("Org/Not-Cached")
    assert time.perf_counter() - start < 1.0
    assert "'Org/Not-Cached' is not a local directory" in str(err.value)


def test_an_unreachable_hub_fails_after_one_attempt(tmp_path, monkeypatch):
    """Instead of the hub client's five retries (~25 s): one refused connection."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"http://127\.0\.0\.1:9 cannot be reached"):
        resolve_model_path("Org/Somewhere")
    assert time.perf_counter() - start < 6.0


def test_loading_errors_name_the_directory(tiny_model_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="cannot load the tokenizer of") as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ModelError, match="cannot load the model in") as err:
        load_policy(str(tmp_path), torch.device("cpu"))  # config.json but no weights
    assert str(tmp_path) in str(err.value)


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
