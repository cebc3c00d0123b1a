"""PPO with a learned critic: token-level rewards, GAE, whitening, and the clipped value loss.

Layout: completions are right-padded, ``mask`` [B, T] is 1 on the tokens of each completion
(a prefix of the row) and 0 on padding. Token t of a completion is the action taken in state
s_t = (prompt, tokens < t); ``values[:, t]`` is V(s_t), the critic's estimate of the return
from token t on. The episode ends after the last completion token, so V there is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ValueLossStats",
    "clipped_value_loss",
    "explained_variance",
    "gae_advantages",
    "masked_sums",
    "token_level_rewards",
    "whiten",
]


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"expected tensors of one [B, T] shape, got {shapes}")


def token_level_rewards(
    rewards: Tensor, mask: Tensor, kl: Tensor | None = None, beta: float = 0.0
) -> Tensor:
    """Per-token rewards of PPO for language models (Ziegler et al. 2019, arXiv 1909.08593
    section 2; Ouyang et al. 2022, arXiv 2203.02155 eq. 2, per token)::

        r_t = -beta * KL_t + [t = last completion token] * R

    rewards: [B] sequence rewards R (finite); mask: [B, T]; kl: [B, T] per-token KL estimates
    (e.g. k1 = log pi_old - log pi_ref) or None for no KL term. Returns [B, T] float32, 0 on
    padding. A row with no token in the mask gets no reward at all.
    """
    if rewards.dim() != 1 or mask.dim() != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"rewards must be [B] and mask [B, T], got {tuple(rewards.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if torch.isnan(rewards).any():
        raise ValueError("rewards contain NaN; leave unscored completions out of the mask")
    m = mask.to(torch.float64)
    lengths = m.sum(1).long()  # [B]
    out = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    out[rows, lengths[rows] - 1] = rewards.to(torch.float64)[rows]
    if kl is not None:
        _check_same_shape(kl=kl, mask=mask)
        out = out - beta * torch.where(mask.bool(), kl.to(torch.float64), 0.0)
    return out.to(torch.float32)


def gae_advantages(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, Schulman et al. 2016 (arXiv 1506.02438) eq. 16::

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}    (= delta_t + gamma lam A_{t+1})
        R_t     = A_t + V(s_t)                                  (the critic's regression target)

    with V(s_T) = 0 after each completion's last token (the episode ends there).

    Args:
        token_rewards: [B, T] r_t (see :func:`token_level_rewards`).
        values: [B, T] V(s_t) from the critic before the update.
        mask: [B, T] 1 on completion tokens (right-padded; a row may be empty).
        gamma: discount in [0, 1]. lam: GAE lambda in [0, 1] (1: Monte Carlo returns minus V;
            0: one-step TD errors).

    Returns:
        (advantages [B, T], returns [B, T]) float32, 0 on padding. Computed in float64.
    """
    _check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    m = mask.to(torch.float64)
    r = token_rewards.to(torch.float64) * m
    v = values.to(torch.float64) * m  # padding values count as 0: V after the last token
    B, T = m.shape
    adv = torch.zeros((B, T), dtype=torch.float64, device=m.device)
    next_value = torch.zeros(B, dtype=torch.float64, device=m.device)
    next_adv = torch.zeros(B, dtype=torch.float64, device=m.device)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = a_t
        next_value, next_adv = v[:, t], a_t
    returns = (adv + v) * m
    return adv.to(torch.float32), returns.to(torch.float32)


def masked_sums(x: Tensor, mask: Tensor) -> tuple[float, float, float]:
    """(sum, sum of squares, count) of ``x`` over the mask, in float64: sums add across
    micro-batches and ranks, so a whole batch's mean and variance can be formed from them."""
    m = mask.bool()
    xm = torch.where(m, x.to(torch.float64), 0.0)
    return float(xm.sum()), float(xm.square().sum()), float(m.sum())


def _mean_var(sums: tuple[float, float, float]) -> tuple[float, float]:
    total, squares, n = sums
    if n < 1:
        return 0.0, 0.0
    mean = total / n
    # sample variance (Bessel), as torch.var
    var = max(squares - n * mean * mean, 0.0) / max(n - 1.0, 1.0)
    return mean, var


def whiten(
    x: Tensor,
    mask: Tensor,
    sums: tuple[float, float, float] | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries of the whole batch; 0 on
    padding. The usual normalisation of GAE advantages in PPO implementations (OpenAI
    baselines ppo2; Huang et al. 2022, "The 37 implementation details of PPO", detail 7).

    ``sums``: :func:`masked_sums` of the whole batch (summed over every rank); None: of ``x``.
    x, mask: [B, T] -> [B, T] float32.
    """
    mean, var = _mean_var(sums if sums is not None else masked_sums(x, mask))
    out = (x.to(torch.float64) - mean) / (var + eps) ** 0.5
    return torch.where(mask.bool(), out, 0.0).to(torch.float32)


def explained_variance(
    residual_sums: tuple[float, float, float], return_sums: tuple[float, float, float]
) -> float:
    """``1 - Var(R - V) / Var(R)`` from :func:`masked_sums` of the residuals ``R - V`` and the
    returns R: 1 for a perfect critic, 0 for one that predicts a constant, < 0 for worse. NaN
    when the returns do not vary."""
    _, var_res = _mean_var(residual_sums)
    _, var_ret = _mean_var(return_sums)
    return 1.0 - var_res / var_ret if var_ret > 0 else float("nan")


@dataclass(frozen=True)
class ValueLossStats:
    """Sums of one micro-batch (add across micro-batches and ranks, then divide by tokens)."""

    loss: float  # the micro-batch's contribution to the batch loss
    clipped_tokens: float  # tokens where the clipped term was the larger one (the clip acted)
    error_sum: float  # sum over tokens of (V - R)^2, unclipped
    num_tokens: float


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None,
    normalizer: float,
) -> tuple[Tensor, ValueLossStats]:
    """PPO's clipped value loss (OpenAI baselines ppo2, the value clipping described with
    PPO; Engstrom et al. 2020, arXiv 2005.12729 section 3, "value function clipping")::

        V_clip = V_old + clamp(V - V_old, -clip, clip)
        loss   = sum over masked tokens of 0.5 * max((V - R)^2, (V_clip - R)^2) / normalizer

    With ``clip=None`` the plain squared error ``0.5 * (V - R)^2``. The normaliser describes
    the whole batch (e.g. its token count over all micro-batches and ranks), so micro-batch
    losses add up to the batch's.

    values: [B, T] with gradient; old_values, returns: [B, T] constants; mask: [B, T].
    Returns (scalar loss, ValueLossStats).
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 (or None to disable), got {clip}")
    if normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    m = mask.bool()
    # garbage in padding must not reach the loss or its gradient
    v = torch.where(m, values, 0.0)
    old = torch.where(m, old_values.to(values.dtype), 0.0)
    ret = torch.where(m, returns.to(values.dtype), 0.0)
    err = (v - ret).square()
    if clip is None:
        term = err
        clipped = torch.zeros_like(m)
    else:
        v_clip = old + (v - old).clamp(-clip, clip)
        err_clip = (v_clip - ret).square()
        term = torch.maximum(err, err_clip)
        clipped = (err_clip > err) & m
    loss = (0.5 * torch.where(m, term, 0.0)).sum() / normalizer
    stats = ValueLossStats(
        loss=float(loss.detach()),
        clipped_tokens=float(clipped.sum()),
        error_sum=float(torch.where(m, err, 0.0).detach().to(torch.float64).sum()),
        num_tokens=float(m.sum()),
    )
    return loss, stats
