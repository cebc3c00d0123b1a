"""Pure tensor math of GRPO and PPO: advantages, GAE and the value loss, log-probs, KL
estimators, policy losses, schedules.

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
from grpo.core.cispo import CISPO_EPS_HIGH, CISPO_EPS_LOW, cispo_loss
from grpo.core.filtering import informative_groups, mask_truncated
from grpo.core.gspo import GSPO_EPS_HIGH, GSPO_EPS_LOW, gspo_loss, sequence_log_ratio
from grpo.core.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_penalty, kl_reward_penalty
from grpo.core.logprobs import (
    logprobs_from_hidden,
    sampling_threshold,
    token_entropy,
    token_logprobs,
)
from grpo.core.losses import POLICY_LOSS_DEFAULTS, POLICY_LOSSES, LossDefaults, policy_loss_fn
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
from grpo.core.value import (
    ValueLossStats,
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    masked_sums,
    token_level_rewards,
    whiten,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_ALIASES",
    "AdvantageOutput",
    "CISPO_EPS_HIGH",
    "CISPO_EPS_LOW",
    "GSPO_EPS_HIGH",
    "GSPO_EPS_LOW",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "LossDefaults",
    "LossStats",
    "POLICY_LOSSES",
    "POLICY_LOSS_DEFAULTS",
    "ValueLossStats",
    "batch_std_advantages",
    "beta_at",
    "canonical_aggregation",
    "cispo_loss",
    "clip_fractions",
    "clipped_surrogate",
    "clipped_value_loss",
    "compute_advantages",
    "dr_grpo_advantages",
    "explained_variance",
    "gae_advantages",
    "group_advantages",
    "grpo_advantages",
    "grpo_loss",
    "gspo_loss",
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
    "masked_sums",
    "micro_batch_token_mean",
    "policy_loss_fn",
    "process_advantages",
    "rloo_advantages",
    "sampling_threshold",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "sequence_log_ratio",
    "token_entropy",
    "token_level_rewards",
    "token_logprobs",
    "token_mean",
    "truncated_is_weights",
    "whiten",
]
