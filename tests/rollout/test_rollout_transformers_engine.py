"""TransformersEngine on the real tiny Llama: order, greedy decoding, stops, seeds, chunking;
the decoding tests run with the growing cache and with static decoding (a preallocated cache and
a compiled step), which must give the same tokens."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

from grpo.rollout.base import Completion, SamplingSettings
from grpo.rollout.seeds import stream_seed
from grpo.rollout.transformers_engine import (
    TransformersEngine,
    _stop_cut,
    filter_logits,
    gumbel_noise,
)

PROMPTS = ["Q: 12+7\n", "Hello", "<think>", "a", "Q: 99-45+3\n"]

HAS_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.fixture(params=["growing-cache", "static-decode"])
def make(request):
    """TransformersEngine with either decoding path. Static decoding compiles with inductor,
    whose CPU backend needs a C++ compiler (CI has g++)."""
    static = request.param == "static-decode"
    if static and not HAS_COMPILER:
        pytest.skip("static decoding compiles C++ with inductor: no g++/c++/clang++ on PATH")
    return functools.partial(TransformersEngine, static_decode=static)


@pytest.fixture
def prompt_ids(tokenizer):
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) > 2  # different lengths: the batch is left-padded
    return ids


@torch.no_grad()
def manual_greedy(model, ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """argmax decoding, one unpadded full forward pass per token, no KV cache."""
    seq = list(ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        t = int(logits.argmax())
        out.append(t)
        seq.append(t)
        if t in eos:
            break
    return out


def greedy(n: int = 1, max_new_tokens: int = 12, **kw) -> SamplingSettings:
    return SamplingSettings(n=n, temperature=0.0, max_new_tokens=max_new_tokens, **kw)


def test_requires_pad_token(tiny_model, tokenizer):
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        TransformersEngine(tiny_model, tokenizer)


def test_n_completions_per_prompt_in_order(tiny_model, tokenizer, prompt_ids):
    engine = TransformersEngine(tiny_model, tokenizer)
    out = engine.generate(prompt_ids, greedy(n=3))
    assert len(out) == len(PROMPTS)
    assert all(len(g) == 3 for g in out)
    for g, ids in zip(out, prompt_ids, strict=True):
        assert all(isinstance(c, Completion) for c in g)
        # greedy: all samples of a prompt agree, and each is that prompt's own continuation
        assert g[0].token_ids == g[1].token_ids == g[2].token_ids
        assert g[0].token_ids == manual_greedy(tiny_model, ids, 12, engine.eos_ids)
    # different prompts give different continuations, so a mix-up would be seen
    assert len({tuple(g[0].token_ids) for g in out}) == len(PROMPTS)


def test_greedy_equals_manual_loop(any_tiny_model, tokenizer, prompt_ids, make):
    """Left-padded batched generation with a KV cache = one unpadded prompt at a time.

    Also on GPT-2, whose absolute positions would expose wrong position ids for padded rows."""
    model = any_tiny_model
    engine = make(model, tokenizer)
    out = engine.generate(prompt_ids, greedy(max_new_tokens=16))
    for (c,), ids in zip(out, prompt_ids, strict=True):
        want = manual_greedy(model, ids, 16, engine.eos_ids)
        assert c.token_ids == want
        assert c.text == tokenizer.decode(want, skip_special_tokens=True)
        assert c.finish_reason == ("stop" if want[-1] in engine.eos_ids else "length")
        if c.finish_reason == "length":
            assert len(c.token_ids) == 16
    assert len({tuple(c.token_ids) for (c,) in out}) == len(PROMPTS)
    assert model.training is False


def test_engine_restores_training_mode(tiny_model, tokenizer, prompt_ids):
    tiny_model.train()
    TransformersEngine(tiny_model, tokenizer).generate(prompt_ids[:1], greedy(max_new_tokens=2))
    assert tiny_model.training is True


def test_eos_stops_with_reason_stop(tiny_model, tokenizer, prompt_ids, make):
    """Make the 4th greedy token of prompt 0 the EOS id: that row stops there, others run on."""
    free = manual_greedy(tiny_model, prompt_ids[0], 12, set())
    eos = free[3]
    assert eos not in free[:3]
    tiny_model.generation_config.eos_token_id = eos
    engine = make(tiny_model, tokenizer)
    assert engine.eos_ids == {eos}
    out = engine.generate(prompt_ids, greedy())
    first = out[0][0]
    assert first.finish_reason == "stop"
    assert first.token_ids == free[:4]  # the EOS token itself is kept
    assert first.token_ids[-1] == eos
    for (c,), ids in zip(out[1:], prompt_ids[1:], strict=True):
        want = manual_greedy(tiny_model, ids, 12, {eos})
        assert c.token_ids == want
        assert c.finish_reason == ("stop" if want[-1] == eos else "length")
        if c.finish_reason == "length":
            assert len(c.token_ids) == 12


def test_sampled_rows_end_at_eos_or_length(tiny_model, tokenizer, prompt_ids, make):
    engine = make(tiny_model, tokenizer)
    eos = tokenizer.eos_token_id
    assert engine.eos_ids == {eos}
    out = engine.generate(prompt_ids, SamplingSettings(n=8, max_new_tokens=24, seed=7))
    reasons = []
    for g in out:
        for c in g:
            reasons.append(c.finish_reason)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 24 and eos not in c.token_ids
    assert "length" in reasons


def test_ignore_eos_gives_max_new_tokens_everywhere(tiny_model, tokenizer, prompt_ids, make):
    free = manual_greedy(tiny_model, prompt_ids[0], 12, set())
    eos = free[1]  # greedy would stop at the second token
    tiny_model.generation_config.eos_token_id = eos
    engine = make(tiny_model, tokenizer)
    out = engine.generate(prompt_ids, greedy(n=2, ignore_eos=True))
    for g in out:
        for c in g:
            assert len(c.token_ids) == 12
            assert c.finish_reason == "length"
            assert eos not in c.token_ids  # EOS is forbidden, not merely ignored afterwards
    sampled = engine.generate(prompt_ids, SamplingSettings(n=4, max_new_tokens=9, ignore_eos=True))
    assert all(len(c.token_ids) == 9 for g in sampled for c in g)


def test_stop_string_cuts_right_after_match(tiny_model, tokenizer, prompt_ids, make):
    # greedy continuation of "Hello" begins "7nn_4_4vAV88"; stop at the first "_4"
    free = manual_greedy(tiny_model, prompt_ids[1], 16, set())
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in free]
    text = "".join(pieces)
    stop = "_4"
    assert stop in text, text
    end = text.index(stop) + len(stop)
    # the shortest token prefix whose text reaches `end`
    k = next(i + 1 for i in range(len(free)) if len("".join(pieces[: i + 1])) >= end)
    engine = make(tiny_model, tokenizer)
    out = engine.generate(prompt_ids, greedy(max_new_tokens=16, stop=(stop,)))
    c = out[1][0]
    assert c.finish_reason == "stop"
    assert c.token_ids == free[:k]
    assert c.text == text[:end] and c.text.endswith(stop)
    # rows whose text never contains the stop string run to the limit unchanged
    for (other,), ids in zip(out, prompt_ids, strict=True):
        full = manual_greedy(tiny_model, ids, 16, engine.eos_ids)
        if stop not in tokenizer.decode(full, skip_special_tokens=True):
            assert other.token_ids == full and other.finish_reason == "length"


def test_stop_cut_on_multi_char_tokens(tokenizer):
    ids = tokenizer("ab</answer>cd", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5  # a, b, </answer>, c, d
    assert _stop_cut(ids, ("</answer>",), tokenizer) == 3
    assert _stop_cut(ids, ("swe",), tokenizer) == 3  # inside the tag token: keep the whole tag
    assert _stop_cut(ids, ("b",), tokenizer) == 2
    assert _stop_cut(ids, ("c", "a"), tokenizer) == 1  # the earliest of several stop strings
    assert _stop_cut(ids, ("zz",), tokenizer) is None


def test_seed_reproducible(tiny_model, tokenizer, prompt_ids, make):
    engine = make(tiny_model, tokenizer)
    s = SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=123)
    a = engine.generate(prompt_ids, s)
    torch.manual_seed(999)  # the global RNG state in between does not matter
    b = engine.generate(prompt_ids, s)
    ids = lambda out: [c.token_ids for g in out for c in g]  # noqa: E731
    assert ids(a) == ids(b)
    c = engine.generate(prompt_ids, SamplingSettings(n=4, max_new_tokens=10, seed=124))
    assert ids(c) != ids(a)
    # sampling actually samples: a prompt's samples differ among themselves
    assert len({tuple(x.token_ids) for x in a[0]}) > 1


@pytest.mark.parametrize(("n", "max_rows"), [(1, 2), (2, 3), (3, 2)])
def test_chunking_gives_same_greedy_output(any_tiny_model, tokenizer, prompt_ids, n, max_rows):
    whole = TransformersEngine(any_tiny_model, tokenizer, max_batch_rows=256)
    chunked = TransformersEngine(any_tiny_model, tokenizer, max_batch_rows=max_rows)
    a = whole.generate(prompt_ids, greedy(n=n))
    b = chunked.generate(prompt_ids, greedy(n=n))
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert [len(g) for g in b] == [n] * len(PROMPTS)


def test_sync_weights_copies_another_module(tiny_model, tiny_model_dir, tokenizer):
    from grpo.train.models import load_policy

    other = load_policy(str(tiny_model_dir), torch.device("cpu"))
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    engine = TransformersEngine(tiny_model, tokenizer)
    engine.sync_weights(tiny_model)  # the trained module itself: nothing to copy
    engine.sync_weights(other)
    for (name, a), b in zip(tiny_model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b), name


def _checkpoint_sampling_defaults(model) -> None:
    """What a checkpoint's generation_config.json often carries (e.g. instruct models)."""
    gc = model.generation_config
    gc.do_sample, gc.temperature, gc.top_k, gc.top_p = True, 0.01, 3, 0.5
    gc.repetition_penalty = 3.0


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_samples_from_the_full_tempered_softmax(tiny_model, tokenizer, prompt_ids, temperature):
    """top_k = 0 and top_p = 1 mean the whole distribution softmax(logits / T): the one the
    trainer scores. The checkpoint's generation_config.json must not change it. Each sampled
    first token is re-derived here as argmax(logits / T + Gumbel noise) from the row's own
    stream, so any filtering or other distribution would pick other tokens."""
    _checkpoint_sampling_defaults(tiny_model)
    engine = TransformersEngine(tiny_model, tokenizer)
    s = SamplingSettings(n=6, temperature=temperature, max_new_tokens=1, seed=5, seed_offset=3)
    out = engine.generate(prompt_ids, s)
    with torch.no_grad():
        for i, ids in enumerate(prompt_ids):
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            for j in range(6):
                g = torch.Generator().manual_seed(stream_seed(5, 3 + i, j))
                u = torch.rand(logits.shape[0], generator=g).double()
                want = int((logits / temperature - torch.log(-torch.log(u))).argmax())
                assert out[i][j].token_ids[0] == want, (i, j)
    assert len({c.token_ids[0] for g in out for c in g}) > 5  # it does sample


def test_gumbel_max_draws_follow_the_softmax():
    """argmax(logits + Gumbel noise) is a draw from softmax(logits): 40,000 draws over 4 tokens
    (probabilities 0.1, 0.2, 0.3, 0.4; a frequency's std is at most 0.0025)."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    gens = [torch.Generator().manual_seed(k) for k in range(40_000)]
    noise = gumbel_noise(gens, 4, torch.device("cpu"))
    picks = (p.log() + noise).argmax(-1)
    freq = torch.bincount(picks, minlength=4).double() / len(gens)
    torch.testing.assert_close(freq, p.double(), atol=0.012, rtol=0)


def test_filter_logits_top_k_then_top_p_by_hand():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    inf = float("-inf")
    # top-k 2: the two largest (5, 4) stay
    got = filter_logits(logits, top_k=2, top_p=1.0)
    assert got.tolist() == [[inf, 5.0, inf, inf, 4.0]]
    # softmax of [1, 5, 3, 2, 4]: 0.0117, 0.6364, 0.0861, 0.0317, 0.2341. Ascending cumulative
    # mass: 0.0117, 0.0434, 0.1295, 0.3636, 1.0. top_p 0.8 drops tokens while the dropped mass
    # stays <= 0.2: the three smallest (0.1295) go, 4.0 (cumulative 0.3636) and 5.0 stay.
    got = filter_logits(logits, top_k=0, top_p=0.8)
    assert got.tolist() == [[inf, 5.0, inf, inf, 4.0]]
    # top_p 0.9: dropped mass <= 0.1 leaves 3.0 in as well
    got = filter_logits(logits, top_k=0, top_p=0.9)
    assert got.tolist() == [[inf, 5.0, 3.0, inf, 4.0]]
    # top-k 3 first ([5, 3, 4], renormalised), then top_p 0.7 over those three:
    # probs 0.6652, 0.0900, 0.2447: ascending cumulative 0.0900, 0.3348, 1.0 -> only 3.0 goes
    got = filter_logits(logits, top_k=3, top_p=0.7)
    assert got.tolist() == [[inf, 5.0, inf, inf, 4.0]]
    # a tiny top_p keeps the most likely token only
    assert filter_logits(logits, top_k=0, top_p=1e-6).isfinite().sum() == 1


def test_top_k_one_samples_the_greedy_token(tiny_model, tokenizer, prompt_ids):
    engine = TransformersEngine(tiny_model, tokenizer)
    plain = engine.generate(prompt_ids, greedy(max_new_tokens=6))
    top1 = engine.generate(prompt_ids, SamplingSettings(n=3, top_k=1, max_new_tokens=6, seed=0))
    for g, (want,) in zip(top1, plain, strict=True):
        assert all(c.token_ids == want.token_ids for c in g)


def test_a_prompt_samples_the_same_alone_in_a_chunk_or_on_another_rank(
    any_tiny_model, tokenizer, prompt_ids
):
    """Per-prompt streams: prompts 0-4 in one call equal prompts 0-1 and 2-4 generated apart
    (as two ranks would, with seed_offset = the first prompt's index), and a chunked engine."""
    s = SamplingSettings(n=4, max_new_tokens=10, seed=77)
    whole = TransformersEngine(any_tiny_model, tokenizer).generate(prompt_ids, s)
    engine = TransformersEngine(any_tiny_model, tokenizer)
    rank0 = engine.generate(prompt_ids[:2], s)
    rank1 = engine.generate(prompt_ids[2:], SamplingSettings(**{**s.__dict__, "seed_offset": 2}))
    chunked = TransformersEngine(any_tiny_model, tokenizer, max_batch_rows=4).generate(
        prompt_ids, s
    )
    ids = lambda out: [[c.token_ids for c in g] for g in out]  # noqa: E731
    assert ids(rank0) + ids(rank1) == ids(whole)
    assert ids(chunked) == ids(whole)
    assert len({tuple(t) for g in ids(whole) for t in g}) > 10


def test_checkpoint_generation_config_does_not_change_greedy(tiny_model, tokenizer, prompt_ids):
    plain = TransformersEngine(tiny_model, tokenizer).generate(prompt_ids, greedy())
    _checkpoint_sampling_defaults(tiny_model)  # repetition_penalty 3 would change argmax picks
    engine = TransformersEngine(tiny_model, tokenizer)
    out = engine.generate(prompt_ids, greedy())
    assert [g[0].token_ids for g in out] == [g[0].token_ids for g in plain]


@pytest.mark.skipif(not HAS_COMPILER, reason="static decoding compiles C++: no C++ compiler")
def test_static_decode_samples_what_the_growing_cache_samples(tiny_model, tokenizer, prompt_ids):
    """Same seeds, same model (fp32): the two decoding paths draw the same tokens, over several
    calls that reuse one preallocated cache (a cache not reset would change the second call)."""
    s = SamplingSettings(n=4, temperature=1.0, max_new_tokens=20, seed=5)
    growing = TransformersEngine(tiny_model, tokenizer).generate(prompt_ids, s)
    static = TransformersEngine(tiny_model, tokenizer, static_decode=True)
    ids = lambda out: [c.token_ids for g in out for c in g]  # noqa: E731
    first = static.generate(prompt_ids, s)
    again = static.generate(prompt_ids, s)
    assert ids(first) == ids(growing)
    assert ids(again) == ids(growing)
    assert len({tuple(x) for x in ids(first)}) > len(PROMPTS)  # it sampled


@pytest.mark.skipif(not HAS_COMPILER, reason="static decoding compiles C++: no C++ compiler")
def test_static_decode_compiles_once_per_length_bucket(tiny_model, tokenizer, prompt_ids):
    """Prompt widths inside one STATIC_LENGTH_BUCKET share a graph: the second and third calls
    (other prompts, same rows, same bucket) compile nothing."""
    from torch._dynamo.utils import counters

    from grpo.rollout.transformers_engine import STATIC_LENGTH_BUCKET

    engine = TransformersEngine(tiny_model, tokenizer, static_decode=True)
    s = greedy(n=2, max_new_tokens=8)
    short = [ids[:3] for ids in prompt_ids[:2]]
    longer = [prompt_ids[0][:5], prompt_ids[4][:5]]
    assert STATIC_LENGTH_BUCKET >= 5 + 8
    before = counters["stats"]["unique_graphs"]
    engine.generate(short, s)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > before  # the counter does count this engine's graph
    engine.generate(longer, s)
    engine.generate(short, s)
    assert counters["stats"]["unique_graphs"] == compiled
    assert len(engine._static_caches) == 1
