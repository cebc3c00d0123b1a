"""The critic of PPO (``algorithm.advantage=gae``): a causal LM's decoder body with a scalar head.

``V(s_t)``, the value of the state before completion token t, is read from the hidden state
that predicts token t (column ``P + t - 1`` of the batch, train/batch.py), the same column the
policy's log-prob of token t comes from. The head starts at zero, so every first value is 0 and
the first advantages are the (whitened) returns themselves.

The critic is as big as the policy's body (the lm-head is dropped) and has its own AdamW state:
that is the memory PPO pays and GRPO does not (docs/algorithms.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from grpo.config import GRPOConfig
from grpo.errors import ConfigError, ModelError
from grpo.train.batch import RolloutBatch
from grpo.train.distributed import World
from grpo.train.models import resolve_model_path
from grpo.train.sharding import shard


class ValueModel(nn.Module):
    """``body`` (the decoder stack of a causal LM, e.g. ``LlamaModel``) + ``Linear(H, 1)``."""

    def __init__(self, body: PreTrainedModel, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, attn: Tensor, cmask: Tensor, prompt_width: int) -> Tensor:
        """values [B, T] float32 of the completion positions, 0 outside ``cmask``."""
        P, T = prompt_width, cmask.shape[1]
        # positions count real tokens only, as in the policy's pass (left-padded prompts)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        hidden = self.body(
            input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False
        ).last_hidden_state[:, P - 1 : P - 1 + T]
        # the head in fp32 even under bf16 autocast: values are regression outputs, and
        # bf16 keeps only ~3 significant digits
        with torch.autocast(ids.device.type, enabled=False):
            values = self.head(hidden.float()).squeeze(-1)
        return torch.where(cmask.bool(), values, 0.0)


@dataclass
class Critic:
    """The value model, its optimizer and the settings its update reads."""

    model: nn.Module  # ValueModel, sharded with FSDP2 on several ranks
    optimizer: torch.optim.Optimizer
    value_clip: float | None
    warmup_steps: int


def critic_values(
    model: nn.Module, batch: RolloutBatch, *, autocast_dtype: torch.dtype | None
) -> Tensor:
    """values [B, T] float32 of one micro-batch (with the graph when grad is enabled)."""
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        return model(
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.completion_mask.to(device),
            batch.prompt_width,
        )


def critic_path(cfg: GRPOConfig, policy_path: str) -> str:
    """Where the critic's body comes from: ``critic.name_or_path``, or the policy's model."""
    name = cfg.critic.name_or_path
    if not name:
        return policy_path
    try:
        return resolve_model_path(name)
    except ModelError as e:
        # the checks are model.name_or_path's; the key at fault here is the critic's
        raise ModelError(
            e.message.replace("model.name_or_path", "critic.name_or_path", 1), hint=e.hint
        ) from e


def build_critic(
    cfg: GRPOConfig,
    path: str,
    vocab_size: int,
    world: World,
    device: torch.device,
    compute_dtype: torch.dtype | None,
) -> Critic | None:
    """The critic of advantage=gae (None for every other estimator): the body of the causal
    LM at ``path`` (from :func:`critic_path`) with a fresh zero head, fp32 master weights,
    sharded like the policy on several ranks, and AdamW with ``critic.lr`` (constant) and
    the policy's betas and weight decay."""
    if cfg.algorithm.advantage != "gae":
        return None
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"critic.name_or_path: cannot load a causal LM from {path}: {e}") from e
    if lm.config.vocab_size < vocab_size:
        raise ConfigError(
            f"key 'critic.name_or_path': its vocabulary has {lm.config.vocab_size} tokens, the "
            f"policy's {vocab_size}; the critic reads the policy's token ids",
            hint="give a critic with the policy's tokenizer, or leave critic.name_or_path empty",
        )
    from grpo.train.models import set_attention

    set_attention(lm, cfg.model.attn_implementation)
    body = lm.base_model
    if cfg.model.gradient_checkpointing:
        body.gradient_checkpointing_enable()
    model: nn.Module = ValueModel(body, lm.config.hidden_size).to(device)
    del lm  # the lm-head is not part of the critic
    model.train()
    if world.distributed:
        model = shard(model, world, compute_dtype)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.critic.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        weight_decay=o.weight_decay,
    )
    return Critic(model, optimizer, cfg.critic.value_clip, cfg.critic.warmup_steps)
