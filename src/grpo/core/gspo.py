"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, Qwen team, arXiv 2507.18071).

The importance ratio is taken per sequence, as the length-normalised ratio of sequence
likelihoods (eq. 7):

    s_i = (pi_theta(o_i | q) / pi_old(o_i | q)) ^ (1 / |o_i|)
        = exp( 1/|o_i| * sum_t (log pi_theta(o_it) - log pi_old(o_it)) ),

and the clip acts on whole sequences (eq. 5, negated for a loss):

    L = -1/G * sum_i min( s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i ).

Because s_i is a geometric mean over tokens it stays close to 1, so the paper's clip range is
about three orders of magnitude tighter than PPO's: eps_low = 3e-4, eps_high = 4e-4 (section
5.1). Its gradient is ``s_i A_i * 1/|o_i| sum_t grad log pi_theta(o_it)`` while the sequence is
not clipped (eq. 10), and 0 once it is.

Implemented as the paper's GSPO-token form (eq. 13-14): per token
``s_it = sg(s_i) * pi_theta(o_it) / sg(pi_theta(o_it))``, numerically equal to s_i, with the
per-token loss ``-min(s_it A_it, clip(s_it) A_it)``. With one advantage per sequence
(A_it = A_i) its value and gradient equal GSPO's under every aggregation (eq. 15-16: each token
carries ``s_i A_i grad log pi(o_it)``, and the sequence mean "grpo" of those per-token terms is
exactly the 1/G sum_i above). It also takes per-token advantages [B, T] (process rewards),
which GSPO proper cannot. "The mean over sequences" is the aggregation "grpo" with the
sequence count of the whole batch as its normaliser, computed once by ``loss_normalizer``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo.core.policy_loss import (
    LossStats,
    _clip_counts,
    _per_row,
    check_loss_inputs,
    masked_inputs,
    reduce_loss,
)

__all__ = ["GSPO_EPS_HIGH", "GSPO_EPS_LOW", "gspo_loss", "sequence_log_ratio"]

# The paper's clip range (arXiv 2507.18071 v2, section 5.1).
GSPO_EPS_LOW = 3e-4
GSPO_EPS_HIGH = 4e-4


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """log s_i = mean over the completion's tokens of (logp - old_logp): [B, T] x3 -> [B].

    A row with no completion token gets 0 (s_i = 1)."""
    m = mask.bool()
    lengths = m.sum(dim=-1).clamp(min=1)
    return torch.where(m, logp - old_logp, 0.0).sum(dim=-1) / lengths


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    eps_low: float = GSPO_EPS_LOW,
    eps_high: float = GSPO_EPS_HIGH,
    aggregation: str = "grpo",
    normalizer: float,
    kl_estimator: str = "k3",
    dual_clip_c: float | None = None,
    token_weights: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, LossStats]:
    """GSPO loss of one micro-batch (module docstring), + beta * KL - entropy_coef * H per
    token, reduced by ``aggregation`` with the whole-batch ``normalizer``.

    Same arguments and reduction contract as :func:`grpo.core.grpo_loss`. The paper's GSPO is
    ``aggregation="grpo"`` with ``normalizer`` = sequences in the whole batch and beta = 0.
    With old_logp None (one update per batch) s_i = 1 and the gradient is that of the
    on-policy ``-A grad(logp)`` under the same aggregation. ``ratio_mean`` and the clip
    fractions of the stats count tokens, each token carrying its sequence's s_i and clip state.
    dual_clip_c is not defined for GSPO and must be None.

    Args:
        logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] or [B, T].
    """
    if dual_clip_c is not None:
        raise ValueError("gspo_loss: dual_clip_c is a token-level PPO clip; GSPO takes None")
    check_loss_inputs(
        logp,
        advantages,
        mask,
        beta=beta,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        normalizer=normalizer,
        ref_logp=ref_logp,
        entropy_coef=entropy_coef,
        old_logp=old_logp,
        token_weights=token_weights,
        entropy=entropy,
    )
    m, logp, old, adv = masked_inputs(logp, old_logp, advantages, mask)
    log_s = sequence_log_ratio(logp, old, m)  # [B]
    # GSPO-token (eq. 13): the value of s_i, the gradient of each token's own log-prob
    s = torch.exp(log_s.detach()[:, None] + logp - logp.detach())  # [B, T]
    a = _per_row(adv)
    per_token = -torch.minimum(s * a, s.clamp(1.0 - eps_low, 1.0 + eps_high) * a)
    with torch.no_grad():
        counts = _clip_counts(s, adv, m, eps_low, eps_high)
    return reduce_loss(
        per_token,
        s,
        counts,
        logp,
        m,
        ref_logp=ref_logp,
        beta=beta,
        kl_estimator=kl_estimator,
        aggregation=aggregation,
        normalizer=normalizer,
        token_weights=token_weights,
        entropy=entropy,
        entropy_coef=entropy_coef,
    )
