"""The rollout batch as tensors: prompts left-padded, completions right-padded.

Row layout, width P + T::

    [pad .. pad | prompt tokens | completion tokens | pad .. pad]
     <-------- P columns ------> <---------- T columns -------->

so completion token ``j`` of every row sits in column ``P + j`` and is predicted by the
hidden state in column ``P + j - 1``. Slicing rows into micro-batches re-trims both paddings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    input_ids: Tensor  # [B, P + T]
    attention_mask: Tensor  # [B, P + T], 1 on real tokens
    completion_mask: Tensor  # [B, T], 1 on completion tokens that enter the loss
    prompt_width: int  # P
    advantages: Tensor  # [B], or [B, T] for token-level (process) advantages
    old_logprobs: Tensor | None = None  # [B, T] when mu > 1
    ref_logprobs: Tensor | None = None  # [B, T] when beta > 0

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_width(self) -> int:
        return self.completion_mask.shape[1]

    def rows(self, index: slice | Tensor) -> RolloutBatch:
        """A sub-batch of rows, with padding columns that no chosen row uses removed."""
        ids = self.input_ids[index]
        attn = self.attention_mask[index]
        cmask = self.completion_mask[index]
        P = self.prompt_width
        prompt_len = attn[:, :P].sum(1)
        drop_left = int(P - prompt_len.max()) if len(prompt_len) else 0
        used = cmask.sum(1)
        keep_t = int(used.max()) if len(used) else 0
        keep_t = max(keep_t, 1)
        cols = slice(drop_left, P + keep_t)
        adv = self.advantages[index]
        if adv.dim() == 2:
            adv = adv[:, :keep_t]
        return replace(
            self,
            input_ids=ids[:, cols],
            attention_mask=attn[:, cols],
            completion_mask=cmask[:, :keep_t],
            prompt_width=P - drop_left,
            advantages=adv,
            old_logprobs=None
            if self.old_logprobs is None
            else self.old_logprobs[index][:, :keep_t],
            ref_logprobs=None
            if self.ref_logprobs is None
            else self.ref_logprobs[index][:, :keep_t],
        )

    def micro_batches(self, size: int) -> list[RolloutBatch]:
        return [self.rows(slice(s, s + size)) for s in range(0, self.num_rows, size)]


def build_batch(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    advantages: Tensor,
    pad_id: int,
    *,
    loss_mask: list[bool] | None = None,
) -> RolloutBatch:
    """Tensors for ``len(prompt_ids)`` rows.

    ``loss_mask[i] = False`` keeps row i out of the loss (its tokens stay in the batch).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError("one prompt per completion row is needed")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    T = max(1, max(len(c) for c in completion_ids))
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    cmask = torch.zeros((B, T), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        attention[i, P - len(p) : P] = 1
        if c:
            input_ids[i, P : P + len(c)] = torch.tensor(c, dtype=torch.long)
            attention[i, P : P + len(c)] = 1
            if loss_mask is None or loss_mask[i]:
                cmask[i, : len(c)] = 1.0
    return RolloutBatch(input_ids, attention, cmask, P, advantages.float())
