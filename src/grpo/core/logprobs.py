"""Per-token log-probabilities and entropies without a full fp32 [tokens, V] tensor.

``log p(label) = z[label] - logsumexp(z)`` (definition of log-softmax) is evaluated chunk by
chunk of positions; each chunk is upcast to float32 on its own, so peak extra memory is
``chunk_size * V * 4`` bytes (about 0.6 GB for chunk_size 1024 and a 152k vocab) instead of
``N * V * 4``. The backward passes are hand-written for the same reason: autograd would keep every
fp32 chunk alive until backward, which is the full fp32 tensor again. Here backward keeps only
the inputs and the per-position logsumexp [N] and recomputes each chunk.

Outputs are float32 (float64 for float64 inputs).

Positions whose label is negative (e.g. -100, the Hugging Face ignore index) get log-prob 0 and
no gradient, so prompt and padding positions can be passed through safely.

``temperature`` divides the logits first: log-probs must be those of the distribution the
completions were sampled from, and samplers apply the temperature before softmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["logprobs_from_hidden", "token_entropy", "token_logprobs"]

_DEFAULT_CHUNK = 1024


def _chunk_forward(z: Tensor, labels: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """z: [c, V] float32, labels: [c] -> (logp [c], lse [c], entropy [c] or empty)."""
    lse = torch.logsumexp(z, dim=-1)
    # log-softmax at the label: z[label] - logsumexp(z).
    picked = z.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
    logp = torch.where(labels >= 0, picked - lse, 0.0)
    if with_entropy:
        # H = -sum_j p_j log p_j = logsumexp(z) - sum_j p_j z_j, since log p_j = z_j - lse.
        p = torch.exp(z - lse[:, None])
        entropy = lse - (p * z).sum(dim=-1)
    else:
        entropy = z.new_empty(0)
    return logp, lse, entropy


def _chunk_grad(
    z: Tensor, labels: Tensor, lse: Tensor, g_logp: Tensor, g_ent: Tensor | None
) -> Tensor:
    """Gradient w.r.t. z [c, V] (float32) of sum(g_logp * logp + g_ent * entropy).

    d logp / dz_j = 1[j = label] - p_j;  dH / dz_j = -p_j (z_j - sum_k p_k z_k).
    """
    p = torch.exp(z - lse[:, None])
    g = torch.where(labels >= 0, g_logp, 0.0)
    grad = p * (-g)[:, None]
    grad.scatter_add_(1, labels.clamp(min=0)[:, None], g[:, None])
    if g_ent is not None:
        mean_z = (p * z).sum(dim=-1, keepdim=True)
        grad -= g_ent[:, None] * p * (z - mean_z)
    return grad


def _autocast_state(device: torch.device) -> tuple[str, bool, torch.dtype]:
    """The autocast state of the forward, so backward can recompute chunks the same way.

    Backward runs outside the caller's ``torch.autocast`` block; without this, the lm-head
    matmuls of backward would run in fp32 while forward ran in bf16 (and a bf16 chunk would
    not match the saved logsumexp exactly).
    """
    kind = device.type
    return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types; float64 stays float64 (gradcheck, reference runs)."""
    return torch.promote_types(dtype, torch.float32)


def _check_chunk(chunk_size: int, temperature: float) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _LogitsStats(torch.autograd.Function):
    """(logits [N, V], labels [N]) -> (logp [N] fp32, entropy [N] fp32 or empty)."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        labels: Tensor,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        n, cdt = logits.shape[0], _compute_dtype(logits.dtype)
        logp = logits.new_empty(n, dtype=cdt)
        lse = logits.new_empty(n, dtype=cdt)
        entropy = logits.new_empty(n if with_entropy else 0, dtype=cdt)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = logits[s:e].to(cdt) / temperature
            lp, ls, ent = _chunk_forward(z, labels[s:e], with_entropy)
            logp[s:e], lse[s:e] = lp, ls
            if with_entropy:
                entropy[s:e] = ent
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp: Tensor, g_ent: Tensor) -> tuple[Tensor | None, ...]:
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        n, c, t = logits.shape[0], ctx.chunk_size, ctx.temperature
        cdt = _compute_dtype(logits.dtype)
        for s in range(0, n, c):
            e = min(s + c, n)
            z = logits[s:e].to(cdt) / t
            ge = g_ent[s:e] if ctx.with_entropy else None
            grad_z = _chunk_grad(z, labels[s:e], lse[s:e], g_logp[s:e], ge)
            grad_logits[s:e] = grad_z / t  # chain rule through z = logits / temperature
        return grad_logits, None, None, None, None


class _HiddenLogprobs(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, labels [N]) -> (logp [N], entropy)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        n, cdt = hidden.shape[0], _compute_dtype(hidden.dtype)
        logp = hidden.new_empty(n, dtype=cdt)
        lse = hidden.new_empty(n, dtype=cdt)
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=cdt)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            # Matmul in the input dtype (bf16 fast path), upcast only the [c, V] chunk.
            z = F.linear(hidden[s:e], weight, bias).to(cdt) / temperature
            lp, ls, ent = _chunk_forward(z, labels[s:e], with_entropy)
            logp[s:e], lse[s:e] = lp, ls
            if with_entropy:
                entropy[s:e] = ent
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        ctx.autocast = _autocast_state(hidden.device)
        # An entropy that is only logged gets no gradient: backward then skips its term.
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp: Tensor, g_ent: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        n, c, t = hidden.shape[0], ctx.chunk_size, ctx.temperature
        cdt = _compute_dtype(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        # Accumulate over chunks in fp32 so bf16 weights do not lose small chunk contributions.
        grad_w = torch.zeros_like(weight, dtype=cdt) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=cdt) if need_b else None
        kind, enabled, amp_dtype = ctx.autocast
        with torch.autocast(kind, dtype=amp_dtype, enabled=enabled):
            for s in range(0, n, c):
                e = min(s + c, n)
                h = hidden[s:e]
                z = F.linear(h, weight, bias).to(cdt) / t
                ge = g_ent[s:e] if ctx.with_entropy and g_ent is not None else None
                grad_z = _chunk_grad(z, labels[s:e], lse[s:e], g_logp[s:e], ge) / t
                grad_z = grad_z.to(h.dtype)
                # the two matmuls of backward run in the forward's autocast dtype
                if grad_h is not None:
                    grad_h[s:e] = (grad_z @ weight).to(hidden.dtype)
                if grad_w is not None:
                    grad_w += (grad_z.t() @ h).to(cdt)
                if grad_b is not None:
                    grad_b += grad_z.sum(dim=0)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    chunk_size: int = _DEFAULT_CHUNK,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Log-probability of each label under the logits.

    Args:
        logits: [B, T, V] (any float dtype; any leading dims [..., V] work).
        labels: [B, T] token ids; negative ids give 0 and no gradient.
        chunk_size: positions (of the flattened B*T) upcast to fp32 at a time.
        temperature: logits are divided by it first.

    Returns:
        [B, T] float32, differentiable w.r.t. logits.
    """
    _check_chunk(chunk_size, temperature)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: "
            "expected logits [..., V] and labels [...]"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    logp, _ = _LogitsStats.apply(flat, labels.reshape(-1), chunk_size, temperature, False)
    return logp.view(labels.shape)


def token_entropy(
    logits: Tensor, chunk_size: int = _DEFAULT_CHUNK, *, temperature: float = 1.0
) -> Tensor:
    """Entropy of the next-token distribution, ``logsumexp(z) - sum softmax(z) * z``.

    Args:
        logits: [B, T, V] (any leading dims [..., V] work).

    Returns:
        [B, T] float32 (nats), differentiable w.r.t. logits.
    """
    _check_chunk(chunk_size, temperature)
    flat = logits.reshape(-1, logits.shape[-1])
    no_labels = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
    _, entropy = _LogitsStats.apply(flat, no_labels, chunk_size, temperature, True)
    return entropy.view(logits.shape[:-1])


def logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    chunk_size: int = _DEFAULT_CHUNK,
    bias: Tensor | None = None,
    with_entropy: bool = False,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) straight from the last hidden states and the lm-head weight.

    The projection ``hidden @ weight.T + bias`` is done per chunk of positions and each [c, V]
    chunk is upcast to fp32 for the logsumexp, so [N, V] logits never exist at once, in any
    dtype. The trainer can gather only the completion positions of the hidden states first
    (skipping prompt positions entirely) and never ask the model for full-vocab logits.

    Args:
        hidden: [N, H] hidden states (any leading dims [..., H] work), e.g. bf16.
        weight: [V, H] lm-head weight.
        labels: [N] next-token ids; negative ids give 0 and no gradient.
        chunk_size: positions projected at a time.
        bias: [V] lm-head bias, if the model has one.
        with_entropy: also return the entropy of each position's distribution.
        temperature: logits are divided by it first.

    Returns:
        (logp [N] float32, entropy [N] float32 or None). Differentiable w.r.t. hidden, weight
        and bias; gradients for weight/bias are accumulated over chunks in fp32.
    """
    _check_chunk(chunk_size, temperature)
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree: "
            "expected hidden [..., H] and labels [...]"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    flat = hidden.reshape(-1, hidden.shape[-1])
    logp, entropy = _HiddenLogprobs.apply(
        flat, weight, bias, labels.reshape(-1), chunk_size, temperature, with_entropy
    )
    logp = logp.view(labels.shape)
    return logp, (entropy.view(labels.shape) if with_entropy else None)
