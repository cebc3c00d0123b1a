"""Per-token estimators of KL(pi_theta || pi_ref) from log-probs of the sampled tokens.

Tokens are sampled from pi_theta (or from pi_old ~ pi_theta), so with the log-ratio
``x = ref_logp - logp`` (log pi_ref / pi_theta) each estimator below has expectation equal to
(k1, k3) or approximating (k2) KL(pi_theta || pi_ref). Source: J. Schulman, "Approximating KL
divergence" (2020), http://joschu.net/blog/kl-approx.html.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["KL_ESTIMATORS", "kl_k1", "kl_k2", "kl_k3", "kl_penalty"]


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
