"""``train.micro_batch_tokens: auto``: the token budget of one forward/backward pass.

Two limits, the smaller wins:

- memory: half of the memory free when the run starts (CUDA: free device memory; CPU: the
  available RAM), over an estimate of the activation bytes one token keeps for the backward
  pass. The estimate is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", sec. 4.1): a transformer layer keeps ``s*b*h*(34 + 5*a*s/h)`` bytes
  with 16-bit activations, i.e. ``34*h + 5*a*s`` per token at sequence length ``s``; with
  activation checkpointing only each layer's input (``2*h``) stays, plus one layer's worth
  while it is recomputed.
- CPU: a pass of about ``CPU_PASS_TOKENS`` tokens. A CPU's GEMMs are already at their rate at
  a few thousand rows, while larger passes only move activations out of cache and through
  more page faults: on the medium benchmark (8 layers, 512 wide, 139 tokens a row, compiled
  layers, 2 cores) one update of 64 rows took 3.41 s as one pass and 2.4-2.7 s as passes of
  13 to 32 rows, and a whole step's peak memory fell from 2.54 GB (passes of 22 rows) to
  2.18 GB (13 rows) at the same speed (docs/benchmarks.md).

The micro-batch plan (RolloutBatch.plan) packs rows by length under the budget; the loss's
normaliser is the whole batch's, so the split does not change the gradient, except under
aggregation "bnpo", which is a token mean per micro-batch by definition.
"""

from __future__ import annotations

import math
from typing import Any

import torch

CPU_PASS_TOKENS = 2048
# the share of free memory the activations of one pass may take: the rest is headroom for the
# allocator, the loss's temporaries and whatever else the machine runs
_FREE_SHARE = 0.5


def activation_bytes_per_token(config: Any, seq_len: int, checkpointing: bool) -> int:
    """Korthikanti et al. 2022's per-token activation estimate for a decoder-only model."""
    h = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    per_layer = 34 * h + 5 * heads * seq_len
    if checkpointing:
        return layers * 2 * h + per_layer
    return layers * per_layer


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_token_budget(
    config: Any, device: torch.device, free_bytes: int, *, seq_len: int, checkpointing: bool
) -> int:
    """Tokens per pass for ``train.micro_batch_tokens = auto`` (see the module docstring);
    ``free_bytes``: the memory free once the run is set up (measured once, so every step
    plans alike and a resumed run splits its batches as the first did)."""
    per_token = activation_bytes_per_token(config, max(seq_len, 1), checkpointing)
    by_memory = int(_FREE_SHARE * free_bytes // per_token)
    budget = by_memory if device.type == "cuda" else min(by_memory, CPU_PASS_TOKENS)
    return max(budget, 1)


def balanced_rows(num_rows: int, width: int, budget: int) -> int:
    """Rows per micro-batch that split ``num_rows`` rows of ``width`` tokens into the fewest
    passes within ``budget`` tokens, as evenly as possible (64 rows in 3 passes: 22, 22, 20,
    not 22, 22, 22 and a pass of 0)."""
    per_pass = max(budget // max(width, 1), 1)
    passes = math.ceil(num_rows / per_pass)
    return math.ceil(num_rows / passes)
