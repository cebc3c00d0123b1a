"""Generation with a transformers model and our own decoding loop: KV cache, batched, left
padding, and one random stream per sampled row.

Why not ``model.generate``: it draws every row's token from one global generator, so what a
row samples depends on the other rows of its batch. Here row j of prompt i draws its Gumbel
noise from a generator seeded by ``stream_seed(seed, seed_offset + i)`` and j, so a prompt gets
the same completions whether it is generated alone, in another chunk, or on another rank
(up to the last bits of the logits, which batch shape can change).

The engine samples from the very module being trained (colocated, shared weights), so
``sync_weights`` has nothing to copy in the usual case; given another module, or a stream of
named tensors (``load_weights``, e.g. the full weights of a sharded policy), it copies them.

``static_decode``: decode with a preallocated KV cache (transformers' ``StaticCache``) and one
``torch.compile``d graph for the one-token step, so a step is a fixed sequence of kernels
instead of eager's few hundred dispatches and a cache that grows by concatenation. On a CPU a
small model's decode step is all overhead: the benchmark's tiny Llama (256x4, 32 rows) takes
about 3.3 ms per step this way, 6 ms eager with the same cache, 9 ms with the growing cache,
and vLLM's CPU engine about 4.5 ms (docs/benchmarks.md). The cache length is rounded up to a
multiple of ``STATIC_LENGTH_BUCKET`` so that prompts of neighbouring widths share a graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo import interrupt
from grpo.rollout.base import Completion, SamplingSettings
from grpo.rollout.seeds import stream_seed

STATIC_LENGTH_BUCKET = 32


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of ``logits`` [B, V]: removed entries become -inf.

    Same order and rule as vLLM's and transformers' samplers: keep the k largest (ties with
    the k-th kept), then drop the smallest tokens while the probability mass of what is dropped
    stays <= 1 - top_p; the most likely token always stays.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= 1.0 - top_p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_noise(
    generators: list[torch.Generator], vocab: int, device: torch.device
) -> torch.Tensor:
    """[B, V] standard Gumbel noise, row b from ``generators[b]``: argmax(logits + noise) is a
    sample of softmax(logits) (the Gumbel-max trick)."""
    u = torch.stack(
        [torch.rand(vocab, generator=g, device=device, dtype=torch.float32) for g in generators]
    )
    tiny = torch.finfo(torch.float32).tiny
    return -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - 1e-7)))


class TransformersEngine:
    """A ``RolloutEngine`` on top of a transformers causal LM."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        autocast_dtype: torch.dtype | None = None,
        max_batch_rows: int = 256,
        static_decode: bool = False,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set tokenizer.pad_token (for example to the "
                "EOS token) before building the transformers engine"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.autocast_dtype = autocast_dtype
        self.max_batch_rows = max_batch_rows
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.static_decode = static_decode
        # one preallocated cache per (rows, length): a new cache object would be a new guard
        # for the compiled step, i.e. a recompile
        self._static_caches: dict[tuple[int, int], object] = {}
        self._compiled_step = torch.compile(self._static_step, dynamic=False)

    # ---- weights -----------------------------------------------------------------------------

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy named tensors (checkpoint names, any dtype) into the engine's model."""
        state = self.model.state_dict(keep_vars=True)
        filled: set[int] = set()
        for name, tensor in weights:
            if name not in state:
                raise KeyError(f"load_weights: the engine's model has no weight {name!r}")
            state[name].copy_(tensor)
            filled.add(id(state[name]))
        # a tied weight arrives under one of its names; buffers (rotary caches) are not sent
        missing = [
            n for n, p in self.model.named_parameters(remove_duplicate=False) if id(p) not in filled
        ]
        if missing:
            raise RuntimeError(f"load_weights: no values for the engine's weights {missing}")

    # ---- generation --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        grad_was_on = torch.is_grad_enabled()
        self.model.eval()
        autocast = (
            torch.autocast(self.model.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), autocast:
                yield
        finally:
            self.model.train(was_training)
            # inference_mode restores the mode it found; setting it again is a cheap defence
            # against anything inside (a compiled step's fallback) that switched it off
            torch.set_grad_enabled(grad_was_on)

    def generate(
        self, prompt_token_ids: list[list[int]], settings: SamplingSettings
    ) -> list[list[Completion]]:
        n = settings.n
        rows = [ids for ids in prompt_token_ids for _ in range(n)]
        seeds = None
        if settings.seed is not None and settings.temperature > 0:
            seeds = [
                stream_seed(settings.seed, settings.seed_offset + i, j)
                for i in range(len(prompt_token_ids))
                for j in range(n)
            ]
        completions: list[Completion] = []
        # Whole prompts per chunk; with per-row streams the chunking does not change the samples.
        chunk = max(n, (self.max_batch_rows // n) * n)
        with self._inference():
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                part_seeds = None if seeds is None else seeds[start : start + chunk]
                completions += self._generate_rows(part, settings, part_seeds)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompt_token_ids))]

    def _generate_rows(
        self, rows: list[list[int]], s: SamplingSettings, seeds: list[int] | None
    ) -> list[Completion]:
        device = self.model.device
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: generated tokens line up at the right
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention[i, width - len(r) :] = 1
        ids, attention = ids.to(device), attention.to(device)
        generators = None
        if s.temperature > 0:
            if seeds is None:  # unseeded: fresh streams from the global generator
                seeds = torch.randint(0, 2**62, (len(rows),)).tolist()
            generators = [torch.Generator(device=device).manual_seed(x) for x in seeds]
        tokens = self._decode(ids, attention, s, generators)
        return [self._finish(t, s) for t in tokens.tolist()]

    def _decode(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        s: SamplingSettings,
        generators: list[torch.Generator] | None,
    ) -> torch.Tensor:
        """[B, <= max_new_tokens] new tokens; rows that finished early are padded with EOS/pad."""
        B, width = ids.shape
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        if self.static_decode:
            logits, advance = self._start_static(ids, attention, positions, s.max_new_tokens)
        else:
            logits, advance = self._start_dynamic(ids, attention, positions)
        position = positions[:, -1:]
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=ids.device)
        finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
        texts_done = [False] * B
        new: list[torch.Tensor] = []
        max_stop = max((len(x) for x in s.stop), default=0)
        for step in range(s.max_new_tokens):
            interrupt.checkpoint()  # a stop asked for long enough ago aborts the generation
            token = self._pick(logits.float(), s, generators)
            pad = self.tokenizer.pad_token_id
            token = torch.where(finished, torch.full_like(token, pad), token)
            new.append(token)
            if not s.ignore_eos and len(eos):
                finished |= torch.isin(token, eos)
            if s.stop:
                self._mark_stops(torch.stack(new, 1), finished, texts_done, s.stop, max_stop)
            if bool(finished.all()) or step == s.max_new_tokens - 1:
                break
            position = position + 1
            logits = advance(token[:, None], position, width + step)
        return torch.stack(new, 1)

    def _start_dynamic(
        self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]:
        """Prefill into a cache that grows by one position per step (eager)."""
        prefill = dict(input_ids=ids, attention_mask=attention, position_ids=positions)
        try:  # only the last position's logits: no [B, P, V] tensor for the prompt
            out = self.model(**prefill, use_cache=True, logits_to_keep=1)
        except TypeError:  # a model without logits_to_keep
            out = self.model(**prefill, use_cache=True)
        state = {"cache": out.past_key_values, "attention": attention}

        def advance(token: torch.Tensor, position: torch.Tensor, at: int) -> torch.Tensor:
            mask = state["attention"]
            state["attention"] = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=token,
                attention_mask=state["attention"],
                position_ids=position,
                past_key_values=state["cache"],
                use_cache=True,
            )
            state["cache"] = out.past_key_values
            return out.logits[:, -1]

        return out.logits[:, -1], advance

    def _start_static(
        self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, room: int
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]:
        """Prefill (eager: the prompt width changes) into a preallocated cache whose length is
        the next multiple of STATIC_LENGTH_BUCKET; every later step is the compiled graph with
        the same shapes, the cache slot given as a tensor so that its value is no guard."""
        B, width = ids.shape
        length = -(-(width + room) // STATIC_LENGTH_BUCKET) * STATIC_LENGTH_BUCKET
        cache = self._static_cache(B, length)
        mask = torch.zeros((B, length), dtype=attention.dtype, device=ids.device)
        mask[:, :width] = attention
        # the prompt through the same forward as each step, eager: its width changes per call
        slots = torch.arange(width, device=ids.device)
        logits = self._static_step(ids, mask, positions, cache, slots)

        def advance(token: torch.Tensor, position: torch.Tensor, at: int) -> torch.Tensor:
            mask[:, at] = 1
            slot = torch.tensor([at], device=ids.device)
            return self._compiled_step(token, mask, position, cache, slot)

        return logits, advance

    def _static_cache(self, rows: int, length: int) -> object:
        from transformers import StaticCache

        key = (rows, length)
        cache = self._static_caches.get(key)
        if cache is None:
            if len(self._static_caches) >= 4:  # evaluation and training shapes, not more
                self._static_caches.pop(next(iter(self._static_caches)))
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._static_caches[key] = cache
        else:
            cache.reset()
        return cache

    def _static_step(
        self,
        token: torch.Tensor,
        mask: torch.Tensor,
        position: torch.Tensor,
        cache: object,
        slot: torch.Tensor,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=token,
            attention_mask=mask,
            position_ids=position,
            past_key_values=cache,
            cache_position=slot,
            use_cache=True,
            logits_to_keep=1,  # the prompt's pass: no [B, P, V] tensor
        )
        return out.logits[:, -1]

    def _pick(
        self, logits: torch.Tensor, s: SamplingSettings, generators: list[torch.Generator] | None
    ) -> torch.Tensor:
        if s.ignore_eos and self.eos_ids:
            # benchmarks: forbid EOS so that every completion has max_new_tokens tokens
            logits[:, sorted(self.eos_ids)] = float("-inf")
        if generators is None:  # temperature 0: greedy
            return logits.argmax(-1)
        logits = filter_logits(logits / s.temperature, s.top_k, s.top_p)
        noise = gumbel_noise(generators, logits.shape[-1], logits.device)
        return (logits + noise).argmax(-1)

    def _mark_stops(
        self,
        tokens: torch.Tensor,
        finished: torch.Tensor,
        done: list[bool],
        stop: tuple[str, ...],
        max_stop_chars: int,
    ) -> None:
        """Finish rows whose text now contains a stop string (only the tail can hold a new one:
        a stop string of m characters spans at most m + a few tokens)."""
        tail = max_stop_chars + 4
        for b in range(tokens.shape[0]):
            if done[b] or bool(finished[b]):
                continue
            text = self.tokenizer.decode(tokens[b, -tail:].tolist(), skip_special_tokens=True)
            if any(x in text for x in stop):
                done[b] = True
                finished[b] = True

    def _finish(self, tokens: list[int], settings: SamplingSettings) -> Completion:
        """Cut a generated row after its EOS or stop string and say why it ended."""
        reason = "length"
        if not settings.ignore_eos:
            for i, t in enumerate(tokens):
                if t in self.eos_ids:
                    tokens, reason = tokens[: i + 1], "stop"
                    break
        if settings.stop:
            cut = _stop_cut(tokens, settings.stop, self.tokenizer)
            if cut is not None:
                tokens, reason = tokens[:cut], "stop"
        if reason == "length" and len(tokens) > settings.max_new_tokens:
            tokens = tokens[: settings.max_new_tokens]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(token_ids=tokens, text=text, finish_reason=reason)


def _stop_cut(
    tokens: list[int], stop: tuple[str, ...], tokenizer: PreTrainedTokenizerBase
) -> int | None:
    """Length of the shortest token prefix whose text contains a stop string, if any."""
    full = tokenizer.decode(tokens, skip_special_tokens=True)
    if not any(s in full for s in stop):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:  # containment is monotone in the prefix length, so bisect
        mid = (lo + hi) // 2
        text = tokenizer.decode(tokens[:mid], skip_special_tokens=True)
        if any(s in text for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return lo
