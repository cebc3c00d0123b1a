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
    engine_logprobs: Tensor | None = None  # [B, T] sampling log-probs reported by the engine
    old_values: Tensor | None = None  # [B, T] critic values before the update (advantage=gae)
    returns: Tensor | None = None  # [B, T] GAE returns, the critic's targets (advantage=gae)

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

        def per_token(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index][:, :keep_t]

        adv = self.advantages[index]
        return replace(
            self,
            input_ids=ids[:, cols],
            attention_mask=attn[:, cols],
            completion_mask=cmask[:, :keep_t],
            prompt_width=P - drop_left,
            advantages=adv[:, :keep_t] if adv.dim() == 2 else adv,
            old_logprobs=per_token(self.old_logprobs),
            ref_logprobs=per_token(self.ref_logprobs),
            engine_logprobs=per_token(self.engine_logprobs),
            old_values=per_token(self.old_values),
            returns=per_token(self.returns),
        )

    def micro_batches(self, size: int) -> list[RolloutBatch]:
        return [self.rows(idx) for idx in self.plan(max_rows=size)]

    def plan(self, *, max_rows: int, max_tokens: int = 0) -> list[Tensor]:
        """Row indices of each micro-batch.

        With ``max_tokens = 0``: consecutive runs of ``max_rows`` rows. With a token budget:
        rows sorted by length and packed while ``rows x padded width <= max_tokens`` (and at
        most ``max_rows`` rows), so rows of similar length share a micro-batch and little
        compute goes to padding. The loss normaliser is the whole batch's, so neither the
        grouping nor the order changes the gradient.
        """
        if max_tokens <= 0:
            return [
                torch.arange(s, min(s + max_rows, self.num_rows))
                for s in range(0, self.num_rows, max_rows)
            ]
        P = self.prompt_width
        prompt_len = self.attention_mask[:, :P].sum(1)
        completion_len = self.attention_mask[:, P:].sum(1)
        order = torch.argsort(prompt_len + completion_len, stable=True).tolist()
        plans: list[list[int]] = []
        current: list[int] = []
        widest_p = widest_c = 0
        for i in order:
            p, c = int(prompt_len[i]), int(completion_len[i])
            width = max(widest_p, p) + max(widest_c, c, 1)
            if current and (len(current) >= max_rows or (len(current) + 1) * width > max_tokens):
                plans.append(current)
                current, widest_p, widest_c = [], 0, 0
            current.append(i)
            widest_p, widest_c = max(widest_p, p), max(widest_c, c)
        if current:
            plans.append(current)
        return [torch.tensor(sorted(rows), dtype=torch.long) for rows in plans]


def build_batch(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    advantages: Tensor,
    pad_id: int,
    *,
    loss_mask: list[bool] | None = None,
    engine_logprobs: list[list[float]] | None = None,
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
    engine = None
    if engine_logprobs is not None:
        engine = torch.zeros((B, T), dtype=torch.float32)
        for i, lp in enumerate(engine_logprobs):
            engine[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(input_ids, attention, cmask, P, advantages.float(), engine_logprobs=engine)
