"""Attention for training passes on CPU: plain matmuls where a gradient is needed, SDPA elsewhere.

PyTorch's CPU SDPA kernel (the flash-attention one) has a slow backward: on the medium
benchmark model (Llama 512x8, 64 rows of 139 tokens, bf16 autocast, 2 cores) it took 1.0 s of
a 4.2 s policy update, where the same attention written as two batched matmuls and a softmax
takes 0.2 s forward and backward together (docs/benchmarks.md, "what we tried"). Its forward is
fine, so passes without a gradient (reference, generation, evaluation) keep SDPA.

The implementation is registered with transformers' attention interface under ``grpo_cpu``
with SDPA's mask builder, and dispatches per call: a query that needs a gradient takes the
matmul path. Gradient checkpointing recomputes the forward with gradients on, so the recompute
takes the same path as the forward it replays.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "grpo_cpu"


def matmul_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """softmax(q k^T * scaling + mask) v (Vaswani et al. 2017, eq. 1) with the softmax in fp32.

    ``attention_mask`` is SDPA's: a boolean [B, 1, q, k] (True = attend), an additive float
    mask, or None for a plain causal pattern aligned to the last key."""
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: heads share a K/V head
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        if q_len > 1 and getattr(module, "is_causal", True):
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device)
            allowed = allowed.tril(diagonal=k_len - q_len)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :k_len]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0 and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def cpu_training_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    needs_grad = torch.is_grad_enabled() and query.requires_grad
    if needs_grad and query.device.type == "cpu" and not kwargs.get("softcap"):
        return matmul_attention(module, query, key, value, attention_mask, **kwargs)  # type: ignore[arg-type]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)  # type: ignore[arg-type]


AttentionInterface.register(NAME, cpu_training_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_cpu_training_attention(model: PreTrainedModel) -> bool:
    """Switch a CPU model that runs SDPA to ``grpo_cpu``; True if it was switched. Models on
    other devices, or with another implementation (eager, flash, a model's own), are left
    as they are."""
    if next(model.parameters()).device.type != "cpu":
        return False
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False  # the model does not dispatch through AttentionInterface
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
