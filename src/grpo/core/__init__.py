"""Pure tensor math of GRPO: advantages, log-probs, KL estimators, policy losses, schedules.

Imports torch only: no model, no config object, no torch.distributed.
Shapes: B sequences, G group size, T completion tokens, V vocab, H hidden.
"""

from grpo.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageOutput,
    batch_std_advantages,
    compute_advantages,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
    process_advantages,
    rloo_advantages,
)
from grpo.core.filtering import informative_groups, mask_truncated
from grpo.core.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_penalty, kl_reward_penalty
from grpo.core.logprobs import logprobs_from_hidden, token_entropy, token_logprobs
from grpo.core.policy_loss import (
    AGGREGATION_ALIASES,
    LOSS_AGGREGATIONS,
    LossStats,
    canonical_aggregation,
    clip_fractions,
    clipped_surrogate,
    grpo_loss,
    loss_normalizer,
    micro_batch_token_mean,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
    truncated_is_weights,
)
from grpo.core.schedules import beta_at, lr_lambda_warmup_cosine

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_ALIASES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdvantageOutput",
    "LossStats",
    "batch_std_advantages",
    "beta_at",
    "canonical_aggregation",
    "clip_fractions",
    "clipped_surrogate",
    "compute_advantages",
    "dr_grpo_advantages",
    "group_advantages",
    "grpo_advantages",
    "grpo_loss",
    "informative_groups",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "kl_reward_penalty",
    "logprobs_from_hidden",
    "loss_normalizer",
    "lr_lambda_warmup_cosine",
    "mask_truncated",
    "micro_batch_token_mean",
    "process_advantages",
    "rloo_advantages",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_entropy",
    "token_logprobs",
    "token_mean",
    "truncated_is_weights",
]
