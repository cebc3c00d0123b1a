"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, section 3.1).

PPO/GRPO clip the token update: once a token's ratio leaves [1 - eps, 1 + eps] on the side its
advantage pushes, its gradient is 0 for the rest of the batch's updates, and the tokens that
go first are the rare, low-probability ones that fork a chain of thought. CISPO clips the
importance-sampling weight instead and stops its gradient, so every token keeps a REINFORCE
gradient, scaled by a bounded weight (eq. 4-5, negated for a loss):

    r_it = pi_theta(o_it) / pi_old(o_it),   r^_it = clip(r_it, 1 - eps_low, 1 + eps_high),
    L = -1 / (sum_i |o_i|) * sum_i sum_t sg(r^_it) A_it log pi_theta(o_it).

Its gradient is ``-sg(r^) A grad(log pi) / N_tokens`` for every token. The paper normalises by
the token count of the whole batch (aggregation "dapo" here).

Clip range. MiniMax "did not impose a lower bound on the IS weight by setting eps_low to a
large value; instead, we only tuned eps_high" and publishes no eps_high. We default to
eps_low = 1 (lower bound 0: no lower bound, every ratio is > 0) and eps_high = 4, a weight cap
of 5: the eps_max = 5 that TRL recommends for its ``loss_type="cispo"`` after ScaleRL (Khatri
et al. 2025, arXiv 2510.13786), who use CISPO at scale. verl's CISPO example uses
clip_ratio_high = 0.2 (cap 1.2), closer to PPO's trust region; both are a key away.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo.core.policy_loss import (
    LossStats,
    _per_row,
    check_loss_inputs,
    masked_inputs,
    reduce_loss,
)

__all__ = ["CISPO_EPS_HIGH", "CISPO_EPS_LOW", "cispo_loss"]

CISPO_EPS_LOW = 1.0  # 1 - 1 = 0: no lower bound (MiniMax-M1)
CISPO_EPS_HIGH = 4.0  # weight cap 1 + 4 = 5 (TRL / ScaleRL eps_max = 5)


def cispo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    eps_low: float = CISPO_EPS_LOW,
    eps_high: float = CISPO_EPS_HIGH,
    aggregation: str = "dapo",
    normalizer: float,
    kl_estimator: str = "k3",
    dual_clip_c: float | None = None,
    token_weights: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, LossStats]:
    """CISPO loss of one micro-batch (module docstring), + beta * KL - entropy_coef * H per
    token, reduced by ``aggregation`` with the whole-batch ``normalizer``.

    Same arguments and reduction contract as :func:`grpo.core.grpo_loss`; the paper's CISPO is
    ``aggregation="dapo"`` with ``normalizer`` = completion tokens in the whole batch. eps_low
    may be >= 1 (no lower bound). With old_logp None (one update per batch) the weight is 1 and
    the gradient is ``-A grad(logp)``, as for every loss; the loss VALUE is then
    ``-A logp`` (not ``-A``), since CISPO multiplies log pi rather than the ratio. No gradient
    is ever cut, so clip_low_frac / clip_high_frac count the tokens whose weight was
    truncated (r < 1 - eps_low, r > 1 + eps_high), whatever the sign of their advantage.
    dual_clip_c must be None.

    Args:
        logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] or [B, T].
    """
    if dual_clip_c is not None:
        raise ValueError("cispo_loss: dual_clip_c bounds a PPO surrogate; CISPO takes None")
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
    ratio = torch.exp(logp.detach() - old)
    weight = ratio.clamp(min=1.0 - eps_low, max=1.0 + eps_high)  # sg(): built from detached logp
    per_token = -weight * _per_row(adv) * logp
    with torch.no_grad():
        counts = (
            ((ratio < 1.0 - eps_low) & m).sum(),
            ((ratio > 1.0 + eps_high) & m).sum(),
            m.new_zeros((), dtype=torch.long),
        )
    return reduce_loss(
        per_token,
        ratio,
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
