"""Shared fixtures: a tiny real Llama and the project's character-level tokenizer, on disk.

The model is saved with ``save_pretrained`` into a session-scoped directory and every test loads
it back with the trainer's own loaders, exactly as a user's model directory is read. No network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama_config

from grpo.data.char_tokenizer import build_char_tokenizer

# Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' spin-waiting
# makes each small op ~100x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _grad_mode_is_left_as_found():
    """Autograd's mode is process-global: a test (or the code under it) that leaves it off
    makes every later backward fail far from the cause. Fail the test that left it off."""
    yield
    leaked = not torch.is_grad_enabled() or torch.is_inference_mode_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "this test left autograd disabled (grad mode off or inference mode on)"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a 2-layer Llama (vocab 128, hidden 32) and its tokenizer."""
    from transformers import LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    cfg = tiny_llama_config(tokenizer)
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 with the same tokenizer. Its positions are absolute (learned), so unlike
    RoPE a constant shift of the position ids changes the outputs: tests of left padding and
    position ids can only fail on a model like this one."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_char_tokenizer()
    cfg = GPT2Config(
        vocab_size=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(4321)
    model = GPT2LMHeadModel(cfg)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    from grpo.train.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def tiny_model(tiny_model_dir: Path):
    """A fresh fp32 copy of the tiny model on the CPU, in eval mode (no dropout anyway)."""
    from grpo.train.models import load_policy

    model = load_policy(str(tiny_model_dir), torch.device("cpu"))
    model.eval()
    return model


@pytest.fixture
def tiny_gpt2(tiny_gpt2_dir: Path):
    from grpo.train.models import load_policy

    model = load_policy(str(tiny_gpt2_dir), torch.device("cpu"))
    model.eval()
    return model


@pytest.fixture(params=["llama", "gpt2"])
def any_tiny_model(request: pytest.FixtureRequest):
    """Both tiny models: Llama (RoPE, relative positions) and GPT-2 (absolute positions)."""
    return request.getfixturevalue("tiny_model" if request.param == "llama" else "tiny_gpt2")
