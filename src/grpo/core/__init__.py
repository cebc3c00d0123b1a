"""Pure tensor math of GRPO: advantages, log-probs, KL estimators, policy losses, schedules.

Imports torch only: no model, no config object, no torch.distributed.
Shapes: B sequences, G group size, T completion tokens, V vocab, H hidden.
"""

from grpo.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageOutput,
    compute_advantages,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
)
from grpo.core.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_penalty
from grpo.core.logprobs import logprobs_from_hidden, token_entropy, token_logprobs
from grpo.core.policy_loss import (
    LOSS_AGGREGATIONS,
    LossStats,
    clip_fractions,
    clipped_surrogate,
    grpo_loss,
    loss_normalizer,
    masked_mean,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)
from grpo.core.schedules import beta_at, lr_lambda_warmup_cosine

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdvantageOutput",
    "LossStats",
    "beta_at",
    "clip_fractions",
    "clipped_surrogate",
    "compute_advantages",
    "dr_grpo_advantages",
    "group_advantages",
    "grpo_advantages",
    "grpo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "logprobs_from_hidden",
    "loss_normalizer",
    "lr_lambda_warmup_cosine",
    "masked_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_entropy",
    "token_logprobs",
    "token_mean",
]
