"""Per-token estimators of KL(pi_theta || pi_ref) from log-probs of the sampled tokens.

Tokens are sampled from pi_theta (or from pi_old ~ pi_theta), so with the log-ratio
``x = ref_logp - logp`` (log pi_ref / pi_theta) each estimator below has expectation equal to
(k1, k3) or approximating (k2) KL(pi_theta || pi_ref). Source: J. Schulman, "Approximating KL
divergence" (2020), http://joschu.net/blog/kl-approx.html.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["KL_ESTIMATORS", "kl_k1", "kl_k2", "kl_k3", "kl_penalty", "kl_reward_penalty"]


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi_theta - log pi_ref (Schulman 2020). Unbiased, high variance, can be < 0.
    logp, ref_logp: [B, T] -> [B, T]."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi_theta - log pi_ref)^2 (Schulman 2020). Biased, low variance, >= 0.
    logp, ref_logp: [B, T] -> [B, T]."""
    return 0.5 * (logp - ref_logp).square()


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(x) - x - 1 with x = log pi_ref - log pi_theta (Schulman 2020; DeepSeekMath
    arXiv 2402.03300 eq. 4). Unbiased, low variance, >= 0. logp, ref_logp: [B, T] -> [B, T]."""
    x = ref_logp - logp
    # expm1(x) - x == exp(x) - x - 1, without cancellation when x is near 0 (the common case).
    return x.expm1() - x


# Name -> estimator(logp [B, T], ref_logp [B, T]) -> kl [B, T].
KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(name: str, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimate by estimator name. logp, ref_logp: [B, T] -> [B, T]."""
    try:
        estimator = KL_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(KL_ESTIMATORS))
        raise ValueError(f"unknown KL estimator {name!r}; valid names: {valid}") from None
    return estimator(logp, ref_logp)


@torch.no_grad()
def kl_reward_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
    *,
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Per-sequence KL penalty to subtract from the reward before advantages (``kl_in_reward``).

    PPO-style RLHF puts the KL to the reference into the reward rather than the loss
    (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022, arXiv 2203.02155
    eq. 2): ``R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))``, where the sequence
    log-ratio is the sum of the per-token log-ratios. Here::

        penalty_i = beta * sum_t m_it * KL_est(logp_it, ref_logp_it)       (reduction "sum")
        penalty_i = beta * mean over masked t of KL_est(...)               (reduction "mean")

    and the trainer uses ``rewards - penalty`` for the advantages (a NaN reward stays NaN).
    With k1 (the default) and "sum", penalty_i is beta times an unbiased single-sample
    estimate of KL(pi || pi_ref) over whole sequences. "mean" removes the length dependence
    (it is no longer the sequence KL).

    Semantics: the penalty is a constant of the reward (computed under no_grad); its gradient
    reaches the policy only through the advantage, like any reward. Because advantages are
    group-relative, only the penalty's differences within a group matter. Do not also add the
    KL to the loss (pass ``beta=0`` to ``grpo_loss``), or it is counted twice.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the sampling policy (pi_old), taken
            before the update: the reward must not depend on the parameters being updated.
        ref_logp: [B, T] reference-model log-probs of the same tokens.
        mask: [B, T] completion tokens.
        beta: KL coefficient (>= 0).
        estimator: a key of KL_ESTIMATORS.
        reduction: "sum" over tokens (the sequence KL) or "mean" per token.

    Returns:
        [B] float32 penalty (>= 0 for k2/k3; may be negative per sequence with k1).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [B, T] shape"
        )
    m = mask.bool()
    # Zero masked positions first so garbage there (inf, NaN) cannot leak into the sum.
    kl = kl_penalty(estimator, torch.where(m, logp, 0.0), torch.where(m, ref_logp, 0.0))
    total = torch.where(m, kl, 0.0).to(torch.float64).sum(dim=-1)
    if reduction == "mean":
        total = total / m.sum(dim=-1).clamp(min=1)
    return (beta * total).to(torch.float32)
