"""train.compile (train/compile_layers.py): which runs compile, and that compiled decoder layers
compute the eager model's log-probs and gradients without recompiling for every new length."""

from __future__ import annotations

import shutil

import pytest
import torch

from grpo.train.batch import build_batch
from grpo.train.compile_layers import (
    compile_decoder_layers,
    compile_wanted,
    decoder_layers,
    static_decode_wanted,
)
from grpo.train.logprob_pass import completion_logprobs
from grpo.train.models import load_policy

CPU = torch.device("cpu")


def test_decoder_layers_are_the_repeated_blocks(tiny_model, tiny_gpt2):
    assert decoder_layers(tiny_model) == list(tiny_model.model.layers)
    assert decoder_layers(tiny_gpt2) == list(tiny_gpt2.transformer.h)


def test_compile_wanted():
    plain = dict(device=CPU, distributed=False, deterministic=False, engine_runs_policy=False)
    has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    assert compile_wanted("auto", **plain) == has_compiler  # inductor's CPU code is C++
    assert not compile_wanted("auto", **(plain | {"distributed": True}))
    assert not compile_wanted("auto", **(plain | {"deterministic": True}))
    assert not compile_wanted("auto", **(plain | {"engine_runs_policy": True}))
    assert not compile_wanted("auto", **(plain | {"device": torch.device("cuda", 0)}))
    assert compile_wanted("true", **(plain | {"distributed": True}))
    assert not compile_wanted("false", **plain)
    with pytest.raises(ValueError, match="train.compile"):
        compile_wanted("sometimes", **plain)


def test_static_decode_wanted():
    plain = dict(device=CPU, distributed=False, deterministic=False)
    has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    assert static_decode_wanted("auto", **plain) == has_compiler
    assert not static_decode_wanted("auto", **(plain | {"distributed": True}))
    assert not static_decode_wanted("auto", **(plain | {"deterministic": True}))
    assert not static_decode_wanted("auto", **(plain | {"device": torch.device("cuda", 0)}))
    assert static_decode_wanted(True, **(plain | {"device": torch.device("cuda", 0)}))
    assert not static_decode_wanted("false", **plain)
    with pytest.raises(ValueError, match="rollout.static_decode"):
        static_decode_wanted("maybe", **plain)


def _batch(width: int, rows: int = 3):
    g = torch.Generator().manual_seed(width)
    prompts = [torch.randint(3, 100, (4 + i,), generator=g).tolist() for i in range(rows)]
    completions = [torch.randint(3, 100, (width - i,), generator=g).tolist() for i in range(rows)]
    return build_batch(prompts, completions, torch.linspace(-1, 1, rows), pad_id=0)


def _pass(model, batch):
    model.zero_grad(set_to_none=True)
    logp, _ = completion_logprobs(model, batch, autocast_dtype=None)
    (logp * batch.advantages[:, None] * batch.completion_mask).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return logp.detach(), grads


def test_compiled_layers_match_eager_across_lengths(tiny_model_dir):
    torch._dynamo.reset()
    eager = load_policy(str(tiny_model_dir), CPU)
    compiled = load_policy(str(tiny_model_dir), CPU)
    assert compile_decoder_layers(compiled) == 2
    eager.train()
    compiled.train()
    frames = torch._dynamo.utils.counters["stats"]
    graphs_before = frames["unique_graphs"]  # the counters live as long as the process
    for width in (6, 9, 13, 5):
        lp_e, g_e = _pass(eager, _batch(width))
        lp_c, g_c = _pass(compiled, _batch(width))
        torch.testing.assert_close(lp_c, lp_e, rtol=1e-5, atol=1e-5)
        assert len(g_c) == len(g_e) > 0
        # fp32 both ways; inductor's fused backward sums in another order, which on an AMD
        # EPYC moved one gradient by 1.1e-5 of its norm. A wrong graph is off by 1e-2 or more.
        for a, b in zip(g_c, g_e, strict=True):
            assert (a - b).norm() <= 5e-5 * b.norm() + 1e-7
        with torch.no_grad():  # the reference pass: a graph of its own
            ref_c, _ = completion_logprobs(compiled, _batch(width), autocast_dtype=None)
        torch.testing.assert_close(ref_c, lp_e, rtol=1e-5, atol=1e-5)
    # a static graph for the first shape, one dynamic graph after: not one per length
    assert 1 <= frames["unique_graphs"] - graphs_before <= 4, dict(frames)
