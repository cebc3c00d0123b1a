"""Generation with transformers ``generate``: KV cache, batched, left padding.

The engine samples from the very module being trained (colocated, shared weights), so
``sync_weights`` has nothing to copy in the usual case; given another module it copies the
state dict. Use it on a CPU or when vLLM is not installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from grpo.rollout.base import Completion, SamplingSettings


class TransformersEngine:
    """A ``RolloutEngine`` on top of ``model.generate``."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        autocast_dtype: torch.dtype | None = None,
        max_batch_rows: int = 256,
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

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
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

    def _generation_config(self, s: SamplingSettings) -> GenerationConfig:
        sample = s.temperature > 0
        cfg = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=sample,
            temperature=s.temperature if sample else None,
            top_p=s.top_p if sample else None,
            # 0, not None: generate fills None with transformers' global default top_k = 50.
            top_k=s.top_k if sample else None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None,
            stop_strings=list(s.stop) or None,
            use_cache=True,
        )
        if s.ignore_eos:
            # Forbid EOS until the limit so every completion has the same length.
            cfg.min_new_tokens = s.max_new_tokens
        return cfg

    def generate(
        self, prompt_token_ids: list[list[int]], settings: SamplingSettings
    ) -> list[list[Completion]]:
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        rows = [ids for ids in prompt_token_ids for _ in range(settings.n)]
        gen_cfg = self._generation_config(settings)
        completions: list[Completion] = []
        # Whole prompts per chunk, so a prompt's samples come from one generate call.
        chunk = max(settings.n, (self.max_batch_rows // settings.n) * settings.n)
        with self._inference():
            for start in range(0, len(rows), chunk):
                completions += self._generate_rows(rows[start : start + chunk], gen_cfg, settings)
        n = settings.n
        return [completions[i * n : (i + 1) * n] for i in range(len(prompt_token_ids))]

    def _generate_rows(
        self, rows: list[list[int]], gen_cfg: GenerationConfig, settings: SamplingSettings
    ) -> list[Completion]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: generated tokens line up at the right
            input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention[i, width - len(r) :] = 1
        device = self.model.device
        # generate() fills every unset field from the checkpoint's generation_config.json
        # (top_k, top_p, temperature, repetition_penalty, ...): sampling would then differ from
        # the softmax(logits / T) the trainer scores. Hide those defaults during the call.
        checkpoint_defaults = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=gen_cfg,
                tokenizer=self.tokenizer if settings.stop else None,
            )
        finally:
            self.model.generation_config = checkpoint_defaults
        new_tokens = out[:, width:].tolist()
        return [self._finish(tokens, settings) for tokens in new_tokens]

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
