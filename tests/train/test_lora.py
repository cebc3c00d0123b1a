"""LoRA: merged weights, the reference as the adapters-off policy, config errors (in process).

The runs through the command line (final/ adapter, eval, export, resume, 2 ranks, vLLM) are in
tests/test_lora_end_to_end.py.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from grpo.config import ConfigError, load_config
from grpo.errors import ModelError
from grpo.train.lora import adapters_disabled, add_lora, lora_scaling, merged_weights
from grpo.train.sharding import checkpoint_name

# `make test` installs the lora extra and sets GRPO_REQUIRE_LORA=1: a missing peft fails there
if os.environ.get("GRPO_REQUIRE_LORA") == "1":
    import peft  # noqa: F401
else:
    pytest.importorskip("peft", reason="LoRA needs peft (pip install grpo[lora])")


def _adapted(model, rank: int = 4, alpha: float = 8.0, targets: list[str] | None = None):
    """The model with adapters whose B is random, so that they change the outputs (peft starts
    B at zero: a fresh adapter is the identity)."""
    wrapped = add_lora(
        model,
        rank=rank,
        alpha=alpha,
        dropout=0.0,
        target_modules=targets or [],
        base_name="unused",
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return wrapped


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_weights_by_hand():
    # W = I, A = [1 2] (r = 1), B = [1 0]^T, alpha / r = 2:
    # W + 2 * B @ A = [[1,0],[0,1]] + 2 * [[1,2],[0,0]] = [[3,4],[0,1]]
    weights = [
        ("layer.q.lora_A.default.weight", torch.tensor([[1.0, 2.0]])),
        ("layer.q.base_layer.weight", torch.eye(2)),
        ("layer.q.base_layer.bias", torch.tensor([5.0, 6.0])),
        ("layer.q.lora_B.default.weight", torch.tensor([[1.0], [0.0]])),
        ("norm.weight", torch.tensor([7.0])),
    ]
    out = dict(merged_weights(weights, scaling=2.0, dtype=torch.float32))
    assert sorted(out) == ["layer.q.bias", "layer.q.weight", "norm.weight"]
    assert torch.equal(out["layer.q.weight"], torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert torch.equal(out["layer.q.bias"], torch.tensor([5.0, 6.0]))
    assert torch.equal(out["norm.weight"], torch.tensor([7.0]))
    assert lora_scaling(32.0, 16) == 2.0


def test_merged_weights_refuse_an_incomplete_layer():
    weights = [("q.base_layer.weight", torch.eye(2)), ("q.lora_A.default.weight", torch.ones(1, 2))]
    with pytest.raises(RuntimeError, match=r"q has \['A', 'W'\]"):
        list(merged_weights(weights, scaling=1.0, dtype=torch.float32))


def test_merged_weights_give_the_adapted_models_outputs(tiny_model):
    tiny_model.double()  # float64: the comparison is of the algebra, not of fp32 rounding
    plain = copy.deepcopy(tiny_model)
    wrapped = _adapted(tiny_model, rank=4, alpha=8.0)
    ids = torch.randint(3, 100, (3, 9))
    adapted = _logits(tiny_model, ids)
    assert not torch.allclose(adapted, _logits(plain, ids), atol=1e-3)  # the adapters matter
    state = ((checkpoint_name(n), t) for n, t in tiny_model.state_dict().items())
    plain.load_state_dict(dict(merged_weights(state, lora_scaling(8.0, 4), torch.float64)))
    torch.testing.assert_close(_logits(plain, ids), adapted, rtol=1e-9, atol=1e-9)
    assert wrapped is not None


def test_the_reference_is_the_policy_with_its_adapters_off(tiny_model):
    base = copy.deepcopy(tiny_model)
    wrapped = _adapted(tiny_model)
    ids = torch.randint(3, 100, (2, 7))
    with adapters_disabled(wrapped):
        off = _logits(tiny_model, ids)
    assert torch.equal(off, _logits(base, ids))  # exactly the base model
    assert not torch.allclose(_logits(tiny_model, ids), off, atol=1e-3)  # on again after


def test_only_the_adapters_train(tiny_model):
    _adapted(tiny_model, targets=["q_proj", "v_proj"])
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers x (q, v) x (A, B)
    assert len(trainable) == 8
    assert all("q_proj" in n or "v_proj" in n for n in trainable)


def test_an_unknown_target_module_names_the_key(tiny_model):
    with pytest.raises(ModelError, match="model.lora_target_modules"):
        add_lora(
            tiny_model,
            rank=4,
            alpha=8.0,
            dropout=0.0,
            target_modules=["no_such_proj"],
            base_name="x",
        )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.lora_rank=-1"], "model.lora_rank"),
        (["model.lora_alpha=16"], "model.lora_alpha"),  # read only with lora_rank > 0
        (["model.lora_target_modules=[q_proj]"], "model.lora_target_modules"),
        (["model.lora_rank=8", "model.lora_alpha=0"], "model.lora_alpha"),
        (["model.lora_rank=8", "model.lora_dropout=1.0"], "model.lora_dropout"),
    ],
)
def test_bad_lora_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_lora_settings_load():
    cfg = load_config(overrides=["model.lora_rank=16", "model.lora_target_modules=[q_proj]"])
    assert cfg.model.lora_rank == 16 and list(cfg.model.lora_target_modules) == ["q_proj"]
