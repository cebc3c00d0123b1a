"""The small interface every generation engine implements.

The trainer hands an engine tokenised prompts and sampling settings, and gets back, for each
prompt, ``n`` completions as token ids, text and a finish reason. After each optimizer step it
calls ``sync_weights`` so the next rollout samples from the updated policy. Engines are
structural (a ``Protocol``): transformers ``generate`` today, vLLM in the speed issue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. ``top_k = 0`` and ``top_p = 1`` switch those filters off."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    # Benchmarks only: keep sampling past EOS so every completion has max_new_tokens tokens.
    ignore_eos: bool = False
    # None: unseeded. Otherwise prompt i of the call samples from its own stream
    # ``rollout.seeds.stream_seed(seed, seed_offset + i)``; ``seed_offset`` is the position of the
    # call's first prompt in the step's whole batch, so a prompt samples the same completions
    # whichever rank or chunk generates it.
    seed: int | None = None
    seed_offset: int = 0


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``token_ids`` are exactly the tokens the policy produced, including the EOS token or the
    tokens of a matched stop string, so the trainer scores the same sequence it sampled.
    ``logprobs`` holds the engine's per-token sampling log-probs when the engine reports them.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = field(default=None)


class RolloutEngine(Protocol):
    """What the training loop needs from a generation engine."""

    def generate(
        self, prompt_token_ids: list[list[int]], settings: SamplingSettings
    ) -> list[list[Completion]]:
        """For each prompt, ``settings.n`` completions (outer list aligned with the prompts)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine sample from these named tensors (checkpoint names, every weight),
        e.g. the full weights gathered from a sharded policy."""
        ...
