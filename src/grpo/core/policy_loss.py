"""The GRPO policy loss: PPO clipped surrogate + beta * KL, and its explicit reduction.

Reduction contract. A loss over a batch is ``sum(per-token terms) / normalizer``, where the
normalizer describes the WHOLE batch (all micro-batches on all ranks) and is computed once with
:func:`loss_normalizer` before the micro-batch loop. Every aggregation below is then a plain sum
over its micro-batch divided by that constant, so the micro-batch losses add up exactly to the
full-batch loss and their gradients add up to the full-batch gradient. Deriving the normalizer
inside a micro-batch (e.g. its own token count) silently reweights tokens by micro-batch.

The one deliberate exception is "bnpo" (TRL's name): a token mean over each micro-batch, whose
normaliser IS the micro-batch's own token count by definition; its result depends on how the
batch is split, and :func:`loss_normalizer` gives it only the number of micro-batches.

Aggregation names: "grpo", "bnpo", "dapo", "dr_grpo"; the older descriptive names
"seq_mean_token_mean", "token_mean" and "seq_mean_token_sum_norm" are aliases of "grpo", "dapo"
and "dr_grpo".

Masked positions (prompt, padding, after EOS) contribute exactly 0 to the loss and the gradient
even if their log-probs are garbage: inputs are replaced by 0 there before any exp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from grpo.core.kl import kl_penalty

__all__ = [
    "AGGREGATION_ALIASES",
    "LOSS_AGGREGATIONS",
    "LossStats",
    "canonical_aggregation",
    "clip_fractions",
    "clipped_surrogate",
    "grpo_loss",
    "loss_normalizer",
    "micro_batch_token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
    "truncated_is_weights",
]


def _per_row(advantages: Tensor) -> Tensor:
    """advantages [B] -> [B, 1] to broadcast over tokens; [B, T] passes through."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def _check_dual_clip(dual_clip_c: float | None) -> None:
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c}")


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO clipped surrogate loss (PPO, Schulman et al. 2017 eq. 7; DeepSeekMath
    arXiv 2402.03300 eq. 3), with separate low/high clip ranges (DAPO arXiv 2503.14476 eq. 10)
    and optional dual clip for negative advantages.

    ``ratio = exp(logp - old_logp)``,
    ``loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``.

    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement
    Learning", arXiv 1912.09729, the dual-clip PPO objective): for A < 0 the objective is
    ``max(min(r A, clip(r) A), c A)``, i.e. the loss is capped at ``-c A = c |A|``. Without it a
    token with A < 0 and a ratio far above 1 + eps_high (the new policy already likes it much
    more than the sampler did) contributes an unbounded ``r |A|``; with it, once r > c the token
    contributes the constant c |A| and no gradient. c must be > 1.

    Args:
        logp: [B, T] log-probs under the current policy (with gradient).
        old_logp: [B, T] log-probs under the sampling policy (no gradient).
        advantages: [B] (one per sequence) or [B, T].
        dual_clip_c: c of the dual clip, or None (off).

    Returns:
        (per_token_loss [B, T], ratio [B, T]); unmasked, reduce with an aggregation.
    """
    _check_dual_clip(dual_clip_c)
    adv = _per_row(advantages)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if dual_clip_c is not None:
        # Dual clip (Ye et al. 2020): for A < 0, loss = min(loss, -c A).
        per_token = torch.where(adv < 0, torch.minimum(per_token, -dual_clip_c * adv), per_token)
    return per_token, ratio


def _clip_counts(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Masked counts of tokens where a clipped branch is the active one: (low, high, dual)."""
    adv = _per_row(advantages)
    m = mask.bool()
    # Only there is the gradient cut off: A < 0 pushing the ratio further down, or A > 0 up.
    low = (adv < 0) & (ratio < 1.0 - eps_low) & m
    high = (adv > 0) & (ratio > 1.0 + eps_high) & m
    if dual_clip_c is None:
        dual = low.new_zeros(())
    else:
        dual = ((adv < 0) & (ratio > dual_clip_c) & m).sum()
    return low.sum(), high.sum(), dual


def clip_fractions(
    ratio: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Fractions of completion tokens clipped on the low side (A < 0, ratio < 1 - eps_low) and
    on the high side (A > 0, ratio > 1 + eps_high).

    ratio, mask: [B, T]; advantages: [B] or [B, T]. Returns two 0-dim float tensors.
    """
    low, high, _ = _clip_counts(ratio, advantages, mask, eps_low, eps_high)
    n = mask.bool().sum().clamp(min=1)
    return low / n, high / n


def truncated_is_weights(
    old_logp: Tensor, engine_logp: Tensor, cap: float, mask: Tensor | None = None
) -> Tensor:
    """Truncated importance-sampling weights for the trainer/engine mismatch.

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
    (TIS): the rollout engine (vLLM, other kernels, other precision) samples from pi_engine,
    not from the trainer's pi_old, so each token's policy-gradient term is reweighted by
    ``w = min(pi_old(y_t) / pi_engine(y_t), C) = min(exp(old_logp - engine_logp), C)``.
    The cap C (the paper uses 2) bounds the variance a token the engine under-sampled can add.

    Args:
        old_logp: [B, T] the trainer's log-probs of the sampled tokens under the weights that
            sampled them (with one update per batch: the current log-probs, detached).
        engine_logp: [B, T] the engine's log-probs of the same tokens (``Completion.logprobs``).
        cap: C > 0.
        mask: [B, T], 1/True on completion tokens; elsewhere the weight is 0 (and never inf or
            NaN, whatever the inputs hold there). None = every position counts.

    Returns:
        [B, T] weights in [0, cap], detached (a constant of the loss, not differentiated).
    """
    if not cap > 0:
        raise ValueError(f"truncated IS cap must be > 0, got {cap}")
    if engine_logp.shape != old_logp.shape:
        raise ValueError(
            f"engine_logp shape {tuple(engine_logp.shape)} != old_logp shape "
            f"{tuple(old_logp.shape)}"
        )
    with torch.no_grad():
        diff = old_logp.detach() - engine_logp.detach()
        if mask is not None:
            if mask.shape != old_logp.shape:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} != old_logp shape {tuple(old_logp.shape)}"
                )
            diff = torch.where(mask.bool(), diff, float("-inf"))  # exp(-inf) = 0
        # clamp before exp: a huge diff would overflow to inf, and min(inf, C) is C anyway
        return torch.exp(diff.clamp(max=math.log(cap))).clamp(max=cap)


# ---- aggregations: (per_token [B, T], mask [B, T], normalizer) -> scalar -------------------------


def seq_mean_token_mean(per_token: Tensor, mask: Tensor, normalizer: float) -> Tensor:
    """Aggregation "grpo", DeepSeekMath eq. 3: ``1/G sum_i 1/|o_i| sum_t l_it``. Numerator
    ``sum_i (sum_t l_it m_it) / |o_i|``; normalizer = number of sequences in the whole batch.
    A sequence with no completion tokens contributes 0."""
    m = mask.bool()
    lengths = m.sum(dim=-1).clamp(min=1)
    return (torch.where(m, per_token, 0.0).sum(dim=-1) / lengths).sum() / normalizer


def token_mean(per_token: Tensor, mask: Tensor, normalizer: float) -> Tensor:
    """Aggregation "dapo", DAPO (arXiv 2503.14476 eq. 12) token-level mean: numerator
    ``sum_it l_it m_it``; normalizer = completion-token count of the whole batch."""
    return torch.where(mask.bool(), per_token, 0.0).sum() / normalizer


def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, normalizer: float) -> Tensor:
    """Aggregation "dr_grpo", Dr. GRPO (arXiv 2503.20783 eq. 3): numerator ``sum_it l_it m_it``;
    normalizer = sequences in the whole batch * max_completion_length (a constant, so no
    length bias)."""
    return torch.where(mask.bool(), per_token, 0.0).sum() / normalizer


def micro_batch_token_mean(per_token: Tensor, mask: Tensor, normalizer: float) -> Tensor:
    """Aggregation "bnpo" (TRL's ``loss_type="bnpo"``): the token mean over THIS micro-batch,
    ``(sum_it l_it m_it) / max(sum_it m_it, 1)``, divided by ``normalizer`` = the number of
    micro-batches whose losses are summed into one gradient, so the batch loss is the mean of
    the micro-batch token means. By definition it depends on the micro-batch split (a token's
    weight is 1 / (K * tokens of its micro-batch)); with one micro-batch it equals "dapo"."""
    m = mask.bool()
    return torch.where(m, per_token, 0.0).sum() / m.sum().clamp(min=1) / normalizer


# Name -> aggregation(per_token [B, T], mask [B, T], normalizer) -> scalar. Aliases included.
LOSS_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "grpo": seq_mean_token_mean,
    "bnpo": micro_batch_token_mean,
    "dapo": token_mean,
    "dr_grpo": seq_mean_token_sum_norm,
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}

# Older descriptive name -> canonical name.
AGGREGATION_ALIASES: dict[str, str] = {
    "seq_mean_token_mean": "grpo",
    "token_mean": "dapo",
    "seq_mean_token_sum_norm": "dr_grpo",
}


def _unknown(kind: str, name: str, registry: dict[str, object]) -> ValueError:
    valid = ", ".join(sorted(registry))
    return ValueError(f"unknown {kind} {name!r}; valid names: {valid}")


def canonical_aggregation(name: str) -> str:
    """The canonical name ("grpo", "bnpo", "dapo" or "dr_grpo") of any registered name."""
    if name not in LOSS_AGGREGATIONS:
        raise _unknown("loss aggregation", name, LOSS_AGGREGATIONS)
    return AGGREGATION_ALIASES.get(name, name)


def loss_normalizer(
    mode: str,
    num_sequences: int,
    num_tokens: int,
    max_completion_length: int,
    *,
    num_micro_batches: int = 1,
) -> float:
    """The normalizer of aggregation ``mode`` for the WHOLE batch (all micro-batches and ranks).

    Args:
        mode: a key of LOSS_AGGREGATIONS.
        num_sequences: B summed over the whole batch ("grpo", "dr_grpo").
        num_tokens: completion tokens (mask sum) over the whole batch ("dapo").
        max_completion_length: the generation cap ("dr_grpo").
        num_micro_batches: micro-batch losses summed into one optimizer step, over all ranks
            ("bnpo" only).

    Returns:
        A float >= 1 (an all-empty batch gives 1 rather than a division by zero).
    """
    kind = canonical_aggregation(mode)
    if kind == "grpo":
        value = float(num_sequences)
    elif kind == "dapo":
        value = float(num_tokens)
    elif kind == "dr_grpo":
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
        value = float(num_sequences) * float(max_completion_length)
    else:  # bnpo
        if num_micro_batches < 1:
            raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
        value = float(num_micro_batches)
    return max(value, 1.0)


# ---- statistics ---------------------------------------------------------------------------------


def _zero() -> Tensor:
    return torch.zeros((), dtype=torch.float64)


@dataclass
class LossStats:
    """Additive statistics of one micro-batch's loss (0-dim detached tensors, no host sync).

    Every field is a sum, so micro-batches merge with ``a + b`` (or :meth:`merge`) and ranks
    with one ``all_reduce(SUM)`` of :meth:`to_tensor`; call :meth:`finalize` once at the end to
    turn the sums into means. ``loss`` is the micro-batch's contribution to the batch loss, so
    its sum is the full-batch loss.
    """

    loss: Tensor
    num_tokens: Tensor
    num_sequences: Tensor
    ratio_sum: Tensor
    clip_low_count: Tensor
    clip_high_count: Tensor
    kl_sum: Tensor
    kl_tokens: Tensor  # tokens with a KL value (0 when no reference was given)
    clip_dual_count: Tensor = field(default_factory=_zero)  # A < 0 and ratio > dual_clip_c

    @classmethod
    def zeros(cls, device: torch.device | str | None = None) -> LossStats:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in fields(cls)))

    def merge(self, other: LossStats) -> LossStats:
        return LossStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    __add__ = merge

    def to_tensor(self) -> Tensor:
        """[num_fields] float64, for ``torch.distributed.all_reduce(SUM)``."""
        return torch.stack([getattr(self, f.name).to(torch.float64) for f in fields(self)])

    @classmethod
    def from_tensor(cls, t: Tensor) -> LossStats:
        return cls(*t.unbind(0))

    def finalize(self) -> dict[str, float]:
        """Means over all accumulated tokens: loss (summed), ratio_mean, clip fractions, kl.

        clip_frac = clip_low_frac + clip_high_frac (the PPO clip); clip_dual_frac counts the
        tokens held by the dual clip (A < 0, ratio > c) separately; it is 0 when dual clip is
        off."""
        n = max(float(self.num_tokens), 1.0)
        low, high = float(self.clip_low_count) / n, float(self.clip_high_count) / n
        out = {
            "loss": float(self.loss),
            "num_tokens": float(self.num_tokens),
            "num_sequences": float(self.num_sequences),
            "ratio_mean": float(self.ratio_sum) / n,
            "clip_low_frac": low,
            "clip_high_frac": high,
            "clip_frac": low + high,
            "clip_dual_frac": float(self.clip_dual_count) / n,
        }
        if float(self.kl_tokens) > 0:
            out["kl"] = float(self.kl_sum) / float(self.kl_tokens)
        return out


# ---- the loss -----------------------------------------------------------------------------------


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    eps_low: float,
    eps_high: float,
    aggregation: str,
    normalizer: float,
    kl_estimator: str = "k3",
    dual_clip_c: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """GRPO loss of one micro-batch, DeepSeekMath (arXiv 2402.03300) eq. 3, negated:
    per token ``-min(r A, clip(r) A) + beta * KL_est(pi_theta || pi_ref)``, then reduced by
    ``aggregation`` with the whole-batch ``normalizer`` (see :func:`loss_normalizer`).

    Args:
        logp: [B, T] current-policy log-probs of the completion tokens (with gradient).
        old_logp: [B, T] sampling-policy log-probs, or None when each batch gets a single
            update (mu = 1): then pi_old = pi_theta numerically, ratio is exactly 1 and the
            gradient is ``-A * grad(logp)``.
        ref_logp: [B, T] reference-model log-probs, or None for no KL term (beta must be 0).
        advantages: [B] (outcome estimators) or [B, T] (per-token, e.g. process_advantages
            trimmed to the micro-batch's T columns).
        mask: [B, T], 1/True on completion tokens.
        beta: KL coefficient (>= 0). With beta == 0 a given ref_logp is only logged. Use 0 here
            when the KL is subtracted from the reward instead (see ``kl_reward_penalty``).
        eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high].
        aggregation: a key of LOSS_AGGREGATIONS.
        normalizer: from loss_normalizer, for the whole batch.
        kl_estimator: a key of KL_ESTIMATORS.
        dual_clip_c: dual-clip constant c > 1 for A < 0 (Ye et al. 2020), or None (off).
        token_weights: [B, T] constant per-token weights of the clipped-surrogate term, e.g.
            :func:`truncated_is_weights` for the trainer/engine mismatch; None = all ones.
            They are detached here, and the KL term is NOT weighted: the weights correct the
            policy-gradient estimate for tokens drawn from the engine rather than from pi_old
            (Yao et al. 2025 apply them to that term); the KL term is a regulariser towards
            pi_ref evaluated on the same tokens, already without any ratio to pi_theta (as in
            DeepSeekMath), so reweighting it would only make its pull token-dependent (up to
            cap-fold on tokens the engine under-sampled) without making it an unbiased estimate.

    Returns:
        (scalar loss, LossStats of this micro-batch).
    """
    if aggregation not in LOSS_AGGREGATIONS:
        raise _unknown("loss aggregation", aggregation, LOSS_AGGREGATIONS)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta = {beta} > 0 needs ref_logp; pass reference log-probs or beta = 0")
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    _check_dual_clip(dual_clip_c)
    named = (
        ("old_logp", old_logp),
        ("ref_logp", ref_logp),
        ("mask", mask),
        ("token_weights", token_weights),
    )
    for name, t in named:
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logp shape {tuple(logp.shape)}")
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages {tuple(advantages.shape)} do not match logp rows")
    elif advantages.dim() == 2:
        if advantages.shape != logp.shape:
            raise ValueError(
                f"per-token advantages shape {tuple(advantages.shape)} != logp shape "
                f"{tuple(logp.shape)}; trim them to the micro-batch's columns"
            )
    else:
        raise ValueError(f"advantages must be [B] or [B, T], got {tuple(advantages.shape)}")

    m = mask.bool()
    advantages = advantages.to(logp.dtype)
    # Zero the inputs at masked positions so exp() there cannot produce inf/NaN that would leak
    # into the sum or the gradient (0 * inf = NaN).
    logp = torch.where(m, logp, 0.0)
    if advantages.dim() == 2:
        advantages = torch.where(m, advantages, 0.0)
    old = logp.detach() if old_logp is None else torch.where(m, old_logp, 0.0)
    per_token, ratio = clipped_surrogate(logp, old, advantages, eps_low, eps_high, dual_clip_c)
    if token_weights is not None:
        # surrogate term only (see Args); zero at masked positions so no inf/NaN can leak
        per_token = per_token * torch.where(m, token_weights.detach().to(per_token.dtype), 0.0)

    kl: Tensor | None = None
    if ref_logp is not None:
        kl = kl_penalty(kl_estimator, logp, torch.where(m, ref_logp, 0.0))
        if beta > 0:
            per_token = per_token + beta * kl  # DeepSeekMath eq. 3: - beta * D_KL inside J

    loss = LOSS_AGGREGATIONS[aggregation](per_token, m, normalizer)

    with torch.no_grad():
        f64 = torch.float64
        low, high, dual = _clip_counts(ratio, advantages, m, eps_low, eps_high, dual_clip_c)
        n_tok = m.sum().to(f64)
        stats = LossStats(
            loss=loss.detach().to(f64),
            num_tokens=n_tok,
            num_sequences=torch.tensor(float(m.shape[0]), dtype=f64, device=logp.device),
            ratio_sum=torch.where(m, ratio, 0.0).sum().to(f64),
            clip_low_count=low.to(f64),
            clip_high_count=high.to(f64),
            kl_sum=(torch.where(m, kl, 0.0).sum().to(f64) if kl is not None else n_tok * 0),
            kl_tokens=n_tok if kl is not None else n_tok * 0,
            clip_dual_count=dual.to(f64),
        )
    return loss, stats
