"""Per-token log-probs of the completion tokens under a model.

The lean path runs the decoder body only, gathers the hidden states of the positions that
predict completion tokens, and projects them through the lm-head chunk by chunk
(``grpo.core.logprobs_from_hidden``): no logits for prompt or padding positions and never a
[tokens, vocab] fp32 tensor. Models whose logits are more than a plain linear head
(soft-capping, scaling) take the generic path through ``model(...).logits`` restricted to the
completion columns.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers import PreTrainedModel

from grpo.core import logprobs_from_hidden, token_entropy, token_logprobs
from grpo.train.batch import RolloutBatch


def _plain_linear_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    head = model.get_output_embeddings()
    cfg = model.config
    if not isinstance(head, torch.nn.Linear):
        return None
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    return head


class PolicyLogprobs(torch.nn.Module):
    """A causal LM whose forward is the completion log-prob pass.

    This is the module FSDP2 shards at its root (train/sharding.py): the pass calls the model's
    decoder body and then its lm-head weight directly, which is only gathered inside the root's
    forward. ``lm`` is the transformers model itself (save it, read its config).
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self,
        ids: Tensor,
        attn: Tensor,
        cmask: Tensor,
        prompt_width: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor | None]:
        return _logprobs(self.lm, ids, attn, cmask, prompt_width, temperature, with_entropy)


def completion_logprobs(
    model: PreTrainedModel | PolicyLogprobs,
    batch: RolloutBatch,
    *,
    autocast_dtype: torch.dtype | None,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """(logp [B, T] float32, entropy [B, T] or None); zeros outside ``completion_mask``.

    ``temperature`` divides the logits, matching the distribution the rollout sampled from.
    Entropy is a metric only: it is computed without gradient.
    """
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    attn = batch.attention_mask.to(device)
    cmask = batch.completion_mask.to(device).bool()
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    P = batch.prompt_width
    with autocast:
        if isinstance(model, PolicyLogprobs):
            return model(ids, attn, cmask, P, temperature, with_entropy)
        return _logprobs(model, ids, attn, cmask, P, temperature, with_entropy)


def _logprobs(
    model: PreTrainedModel,
    ids: Tensor,
    attn: Tensor,
    cmask: Tensor,
    P: int,
    temperature: float,
    with_entropy: bool,
) -> tuple[Tensor, Tensor | None]:
    # Positions count real tokens only, as during generation with left padding.
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    T = cmask.shape[1]
    labels = ids[:, P : P + T]
    device = ids.device
    logp = torch.zeros(cmask.shape, dtype=torch.float32, device=device)
    entropy = torch.zeros(cmask.shape, dtype=torch.float32, device=device) if with_entropy else None
    head = _plain_linear_head(model)
    if head is not None:
        hidden = model.base_model(
            input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        h = hidden[:, P - 1 : P - 1 + T][cmask]  # [N, H]: only positions that predict
        lp, ent = logprobs_from_hidden(
            h,
            head.weight,
            labels[cmask],
            bias=head.bias,
            temperature=temperature,
            with_entropy=entropy is not None,
        )
        if entropy is not None:
            # one pass: the entropy comes from the same logits chunks, with no gradient
            entropy[cmask] = ent.detach()
    else:
        logits = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=T + 1,
        ).logits[:, :T]  # [B, T, V]: the columns that predict completion tokens
        lp = token_logprobs(logits, labels.masked_fill(~cmask, -1), temperature=temperature)[cmask]
        if entropy is not None:
            with torch.no_grad():
                entropy[cmask] = token_entropy(logits.detach(), temperature=temperature)[cmask]
    logp = logp.masked_scatter(cmask, lp.float())
    return logp, entropy
