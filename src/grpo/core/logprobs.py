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

Sampling-mask replay (``top_k`` > 0 or ``top_p`` < 1). An engine that samples with top-k / top-p
draws from the truncated, renormalised distribution, so the log-prob of a sampled token is
``z[label] - logsumexp(z over the kept set)``, not the full-vocabulary log-softmax (which is
lower by the log of the kept mass and biases every importance ratio by it). The kept set is
rebuilt here from the trainer's own logits with vLLM's rules (0.32, ``apply_top_k_top_p`` of
its sampler, the path vLLM runs on CPUs; its GPU kernel implements the same rules):

* the temperature divides the logits first; then top-k, then top-p on what top-k kept;
* top-k keeps every logit >= the k-th largest (ties with the k-th are all kept); k >= V or
  k <= 0 means no top-k;
* top-p sorts the kept probabilities in ascending order, takes their cumulative sum c, and
  drops the tokens with c <= 1 - p; the most likely token is always kept. Equivalently, a
  token is kept when the probability of the tokens above it is < p.

Both rules keep the tokens whose logit is above a per-position threshold tau, so the kept set
is stored as tau [N] plus one tie weight [N] (no [N, V] mask is ever saved) and backward
recomputes it from the same logits. Ties at tau are common with bf16 logits: vLLM then keeps
some of the tied tokens (by sort position), and since they share one logit only their number
matters; each token tied at tau counts with weight (number kept) / (number tied), which gives
vLLM's normaliser exactly. Because the engine's logits differ from the trainer's by kernel
rounding, a sampled token can fall just outside the trainer's kept set; the label is then
added to the set (the engine did sample it), so its log-prob stays finite.

Gradients through the mask: the kept set is piecewise constant in the logits, so the gradient
is that of the log-softmax over the kept set (0 for dropped tokens), as for any argmax-type
selection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["logprobs_from_hidden", "sampling_threshold", "token_entropy", "token_logprobs"]

_DEFAULT_CHUNK = 1024
# Elements of one sorted block in the top-p-only threshold (values + int64 indices: 12 bytes
# each), so a 152k vocabulary sorts ~110 rows at a time (~200 MB) whatever the chunk size.
_SORT_BLOCK = 1 << 24


def _truncates(top_k: int, top_p: float, vocab: int) -> bool:
    return 0 < top_k < vocab or top_p < 1.0


def _check_truncation(top_k: int, top_p: float) -> None:
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 disables), got {top_p}")


def _cut(ascending: Tensor, dropped: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(tau, tie_weight) of each row, from ``ascending`` [c, M] (the kept-by-top-k values in
    ascending order) and ``dropped`` [c] (how many of them top-p drops, <= M - 1).

    vLLM keeps positions ``dropped`` .. M - 1 of its sorted row. Tokens tied with the first kept
    value tau may sit on both sides of that cut; which ones are kept depends on sort order, but
    they share one logit, so only their number n matters for the normaliser. Each of the m
    tokens tied at tau gets the weight n / m (1 when the cut is not inside a tie)."""
    tau = ascending.gather(-1, dropped[:, None]).squeeze(-1)
    n = (ascending <= tau[:, None]).sum(-1) - dropped
    m = (z == tau[:, None]).sum(-1)
    return tau, n.to(z.dtype) / m.clamp(min=1).to(z.dtype)


def sampling_threshold(z: Tensor, top_k: int = 0, top_p: float = 1.0) -> tuple[Tensor, Tensor]:
    """vLLM's top-k-then-top-p filter as a per-row threshold (rules in the module docstring).

    Args:
        z: [c, V] logits already divided by the temperature (float32 or float64).
        top_k: 0 (or >= V) disables top-k.
        top_p: 1 disables top-p.

    Returns:
        (tau [c], tie_weight [c]) in z's dtype: tokens with ``z > tau`` are kept, tokens with
        ``z == tau`` count with weight tie_weight in (0, 1] (the share of them vLLM keeps),
        the others are dropped. tau is -inf where nothing is dropped.
    """
    _check_truncation(top_k, top_p)
    c, vocab = z.shape
    k = top_k if 0 < top_k < vocab else 0
    if k == 0 and top_p >= 1.0:
        return z.new_full((c,), float("-inf")), z.new_ones(c)
    if k:
        top = z.topk(k, dim=-1).values  # [c, k], descending
        tau_k = top[:, -1]
        if top_p >= 1.0:
            return tau_k, z.new_ones(c)  # every tie with the k-th value is kept
        # Top-k keeps ties with the k-th value beyond k: E more tokens of value tau_k, first in
        # the ascending order, each of probability q. vLLM's ascending cumulative sum over the
        # kept row is then i * q for those (i = 1..E), and E q + cumsum(rest) after them.
        extra = (z == tau_k[:, None]).sum(-1) - (top == tau_k[:, None]).sum(-1)  # E [c]
        ascending = top.flip(-1)
        ef = extra.to(z.dtype)
        lse = torch.logaddexp(torch.logsumexp(ascending, dim=-1), tau_k + torch.log(ef))
        q = torch.exp(tau_k - lse)
        cum = (ef * q)[:, None] + torch.cumsum(torch.exp(ascending - lse[:, None]), dim=-1)
        limit = 1.0 - top_p
        in_ties = torch.floor(limit / q).clamp(min=0).minimum(ef).long()  # of the E extra ties
        dropped = in_ties + (cum <= limit).sum(-1)  # the later ones only count past all E
        dropped = dropped.clamp(max=extra + k - 1)
        # the full ascending row: E copies of tau_k, then the k top-k values
        past = (dropped - extra).clamp(min=0)
        tau = torch.where(dropped < extra, tau_k, ascending.gather(-1, past[:, None])[:, 0])
        n = extra + (ascending <= tau[:, None]).sum(-1) - dropped
        m = (z == tau[:, None]).sum(-1)
        return tau, n.to(z.dtype) / m.clamp(min=1).to(z.dtype)
    # top-p alone: a full ascending sort, block of rows by block of rows
    rows = max(1, _SORT_BLOCK // vocab)
    tau, weight = z.new_empty(c), z.new_empty(c)
    for s in range(0, c, rows):
        block = z[s : s + rows]
        ascending = block.sort(dim=-1).values
        cum = torch.cumsum(torch.softmax(ascending, dim=-1), dim=-1)
        # vLLM drops c <= 1 - p and always keeps the last (largest) position
        dropped = (cum <= 1.0 - top_p).sum(dim=-1).clamp(max=vocab - 1)
        tau[s : s + rows], weight[s : s + rows] = _cut(ascending, dropped, block)
    return tau, weight


def _log_weights(z: Tensor, labels: Tensor, cut: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """[c, V] log-weights of the kept set: 0 above tau, log(tie_weight) at tau, -inf below; the
    label gets 0 if it was below (the engine sampled it, so it was in the engine's kept set even
    when rounding put it just below the trainer's threshold). None when nothing is dropped."""
    if cut is None:
        return None
    tau, weight = cut[0][:, None], cut[1][:, None]
    logw = torch.where(z > tau, 0.0, torch.where(z == tau, torch.log(weight), float("-inf")))
    idx = labels.clamp(min=0)[:, None]
    below = (logw.gather(1, idx) == float("-inf")) & (labels >= 0)[:, None]
    logw.scatter_(1, idx, torch.where(below, 0.0, logw.gather(1, idx)))
    return logw


def _chunk_forward(
    z: Tensor, labels: Tensor, with_entropy: bool, logw: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """z: [c, V] float32, labels: [c], logw: [c, V] kept-set log-weights or None (all kept)
    -> (logp [c], lse [c], entropy [c] or empty), of the distribution q_j ~ w_j exp(z_j)."""
    zw = z if logw is None else z + logw  # -inf on dropped tokens
    lse = torch.logsumexp(zw, dim=-1)
    # log-softmax at the label: z[label] - logsumexp(z) (a kept label has weight 1 in vLLM).
    picked = z.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
    logp = torch.where(labels >= 0, picked - lse, 0.0)
    if with_entropy:
        # H = -sum_j q_j log q_j = lse - sum_j q_j zw_j, since log q_j = zw_j - lse.
        q = torch.exp(zw - lse[:, None])  # 0 on dropped tokens
        entropy = lse - (q * torch.where(q > 0, zw, 0.0)).sum(dim=-1)  # no 0 * -inf
    else:
        entropy = z.new_empty(0)
    return logp, lse, entropy


def _chunk_grad(
    z: Tensor,
    labels: Tensor,
    lse: Tensor,
    g_logp: Tensor,
    g_ent: Tensor | None,
    logw: Tensor | None = None,
) -> Tensor:
    """Gradient w.r.t. z [c, V] (float32) of sum(g_logp * logp + g_ent * entropy).

    d logp / dz_j = 1[j = label] - q_j;  dH / dz_j = -q_j (zw_j - sum_k q_k zw_k), with q the
    distribution over the kept set (q_j = 0, so no gradient, for a dropped token) and
    zw = z + log w (the weights are constants of the cut).
    """
    zw = z if logw is None else z + logw
    q = torch.exp(zw - lse[:, None])
    g = torch.where(labels >= 0, g_logp, 0.0)
    grad = q * (-g)[:, None]
    grad.scatter_add_(1, labels.clamp(min=0)[:, None], g[:, None])
    if g_ent is not None:
        zw0 = zw if logw is None else torch.where(q > 0, zw, 0.0)
        mean_z = (q * zw0).sum(dim=-1, keepdim=True)
        grad -= g_ent[:, None] * q * (zw0 - mean_z)
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
    """(logits [N, V], labels [N]) -> (logp [N] fp32, entropy [N] fp32 or empty), over the
    top-k / top-p kept set when ``truncate`` = (top_k, top_p) is given."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        labels: Tensor,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
        truncate: tuple[int, float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        n, cdt = logits.shape[0], _compute_dtype(logits.dtype)
        logp = logits.new_empty(n, dtype=cdt)
        lse = logits.new_empty(n, dtype=cdt)
        tau = logits.new_empty(n if truncate else 0, dtype=cdt)
        tie_w = logits.new_empty(n if truncate else 0, dtype=cdt)
        entropy = logits.new_empty(n if with_entropy else 0, dtype=cdt)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = logits[s:e].to(cdt) / temperature
            logw = None
            if truncate:
                tau[s:e], tie_w[s:e] = sampling_threshold(z, *truncate)
                logw = _log_weights(z, labels[s:e], (tau[s:e], tie_w[s:e]))
            lp, ls, ent = _chunk_forward(z, labels[s:e], with_entropy, logw)
            logp[s:e], lse[s:e] = lp, ls
            if with_entropy:
                entropy[s:e] = ent
        ctx.save_for_backward(logits, labels, lse, tau, tie_w)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        ctx.truncate = bool(truncate)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp: Tensor, g_ent: Tensor) -> tuple[Tensor | None, ...]:
        logits, labels, lse, tau, tie_w = ctx.saved_tensors
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        grad_logits = torch.empty_like(logits)
        n, c, t = logits.shape[0], ctx.chunk_size, ctx.temperature
        cdt = _compute_dtype(logits.dtype)
        for s in range(0, n, c):
            e = min(s + c, n)
            z = logits[s:e].to(cdt) / t
            cut = (tau[s:e], tie_w[s:e]) if ctx.truncate else None
            logw = _log_weights(z, labels[s:e], cut)
            ge = g_ent[s:e] if ctx.with_entropy and g_ent is not None else None
            grad_z = _chunk_grad(z, labels[s:e], lse[s:e], g_logp[s:e], ge, logw)
            grad_logits[s:e] = grad_z / t  # chain rule through z = logits / temperature
        return grad_logits, None, None, None, None, None


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
        truncate: tuple[int, float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        n, cdt = hidden.shape[0], _compute_dtype(hidden.dtype)
        logp = hidden.new_empty(n, dtype=cdt)
        lse = hidden.new_empty(n, dtype=cdt)
        tau = hidden.new_empty(n if truncate else 0, dtype=cdt)
        tie_w = hidden.new_empty(n if truncate else 0, dtype=cdt)
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=cdt)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            # Matmul in the input dtype (bf16 fast path), upcast only the [c, V] chunk.
            z = F.linear(hidden[s:e], weight, bias).to(cdt) / temperature
            logw = None
            if truncate:
                tau[s:e], tie_w[s:e] = sampling_threshold(z, *truncate)
                logw = _log_weights(z, labels[s:e], (tau[s:e], tie_w[s:e]))
            lp, ls, ent = _chunk_forward(z, labels[s:e], with_entropy, logw)
            logp[s:e], lse[s:e] = lp, ls
            if with_entropy:
                entropy[s:e] = ent
        # the kept set is saved as one threshold per position, never as an [N, V] mask
        ctx.save_for_backward(hidden, weight, bias, labels, lse, tau, tie_w)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        ctx.truncate = bool(truncate)
        ctx.autocast = _autocast_state(hidden.device)
        # An entropy that is only logged gets no gradient: backward then skips its term.
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp: Tensor, g_ent: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse, tau, tie_w = ctx.saved_tensors
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
                cut = (tau[s:e], tie_w[s:e]) if ctx.truncate else None
                logw = _log_weights(z, labels[s:e], cut)
                ge = g_ent[s:e] if ctx.with_entropy and g_ent is not None else None
                grad_z = _chunk_grad(z, labels[s:e], lse[s:e], g_logp[s:e], ge, logw) / t
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
        return grad_h, grad_w, grad_b, None, None, None, None, None


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    chunk_size: int = _DEFAULT_CHUNK,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Tensor:
    """Log-probability of each label under the logits.

    Args:
        logits: [B, T, V] (any float dtype; any leading dims [..., V] work).
        labels: [B, T] token ids; negative ids give 0 and no gradient.
        chunk_size: positions (of the flattened B*T) upcast to fp32 at a time.
        temperature: logits are divided by it first.
        top_k, top_p: the sampler's truncation (0 and 1: none); the log-prob is then taken
            over the kept set, renormalised, as vLLM samples (module docstring).

    Returns:
        [B, T] float32, differentiable w.r.t. logits.
    """
    _check_chunk(chunk_size, temperature)
    _check_truncation(top_k, top_p)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: "
            "expected logits [..., V] and labels [...]"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    truncate = (top_k, top_p) if _truncates(top_k, top_p, flat.shape[-1]) else None
    logp, _ = _LogitsStats.apply(flat, labels.reshape(-1), chunk_size, temperature, False, truncate)
    return logp.view(labels.shape)


def token_entropy(
    logits: Tensor,
    chunk_size: int = _DEFAULT_CHUNK,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Tensor:
    """Entropy of the next-token distribution, ``logsumexp(z) - sum softmax(z) * z``.

    Args:
        logits: [B, T, V] (any leading dims [..., V] work).
        top_k, top_p: entropy of the truncated, renormalised distribution (0 and 1: none).

    Returns:
        [B, T] float32 (nats), differentiable w.r.t. logits.
    """
    _check_chunk(chunk_size, temperature)
    _check_truncation(top_k, top_p)
    flat = logits.reshape(-1, logits.shape[-1])
    no_labels = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
    truncate = (top_k, top_p) if _truncates(top_k, top_p, flat.shape[-1]) else None
    _, entropy = _LogitsStats.apply(flat, no_labels, chunk_size, temperature, True, truncate)
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
    top_k: int = 0,
    top_p: float = 1.0,
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
        with_entropy: also return the entropy of each position's distribution (with a
            gradient, for an entropy bonus; detach it when it is only logged).
        temperature: logits are divided by it first.
        top_k, top_p: the sampler's truncation (0 and 1: none); log-probs and entropies are
            then those of the kept set, renormalised, as vLLM samples (module docstring).

    Returns:
        (logp [N] float32, entropy [N] float32 or None). Differentiable w.r.t. hidden, weight
        and bias; gradients for weight/bias are accumulated over chunks in fp32.
    """
    _check_chunk(chunk_size, temperature)
    _check_truncation(top_k, top_p)
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
    truncate = (top_k, top_p) if _truncates(top_k, top_p, weight.shape[0]) else None
    logp, entropy = _HiddenLogprobs.apply(
        flat, weight, bias, labels.reshape(-1), chunk_size, temperature, with_entropy, truncate
    )
    logp = logp.view(labels.shape)
    return logp, (entropy.view(labels.shape) if with_entropy else None)
