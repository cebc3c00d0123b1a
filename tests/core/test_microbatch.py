"""Splitting a batch into micro-batches must not change the loss or the gradient.

A tiny "model": a learnable lm-head W [V, H] applied to fixed hidden states. The batch is split
into micro-batches of unequal row counts, each padded only to its own longest completion (so T
differs too), with the normalizer computed once for the whole batch.
"""

import pytest
import torch

from grpo.core import (
    LOSS_AGGREGATIONS,
    LossStats,
    group_advantages,
    grpo_loss,
    logprobs_from_hidden,
    loss_normalizer,
)

B, T, H, V, G = 6, 7, 4, 9, 3
LENGTHS = [7, 2, 5, 1, 3, 4]  # completion lengths; max_completion_length = T = 7
SPLITS = [(0, 1), (1, 4), (4, 6)]  # 1, 3 and 2 rows; token counts 7, 8 and 7


def _setup() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, H, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    weight = torch.randn(V, H, generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).long()
    with torch.no_grad():
        logp0, _ = logprobs_from_hidden(hidden, weight, labels)
    return {
        "hidden": hidden,
        "labels": labels,
        "weight": weight,
        "mask": mask,
        # old/ref log-probs away from the current ones so some tokens clip and KL is not 0.
        "old": logp0 + 0.3 * torch.randn(B, T, generator=g),
        "ref": logp0 + 0.2 * torch.randn(B, T, generator=g),
        "adv": group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.4]), G).advantages,
    }


def _loss(
    d: dict[str, torch.Tensor],
    weight: torch.Tensor,
    rows: tuple[int, int],
    aggregation: str,
    normalizer: float,
) -> tuple[torch.Tensor, LossStats]:
    s, e = rows
    t = int(d["mask"][s:e].sum(-1).max())  # pad this micro-batch only to its own longest row
    logp, _ = logprobs_from_hidden(d["hidden"][s:e, :t], weight, d["labels"][s:e, :t])
    return grpo_loss(
        logp,
        d["old"][s:e, :t],
        d["ref"][s:e, :t],
        d["adv"][s:e],
        d["mask"][s:e, :t],
        beta=0.04,
        eps_low=0.2,
        eps_high=0.28,
        aggregation=aggregation,
        normalizer=normalizer,
    )


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
def test_micro_batches_sum_to_full_batch(aggregation: str) -> None:
    d = _setup()
    norm = loss_normalizer(aggregation, B, int(d["mask"].sum()), T)

    w_full = d["weight"].clone().requires_grad_()
    full, full_stats = _loss(d, w_full, (0, B), aggregation, norm)
    full.backward()

    w_micro = d["weight"].clone().requires_grad_()
    total = torch.zeros(())
    stats = LossStats.zeros()
    for rows in SPLITS:
        loss, st = _loss(d, w_micro, rows, aggregation, norm)
        loss.backward()  # gradients accumulate in w_micro.grad, as in a training loop
        total = total + loss.detach()
        stats = stats + st

    assert full_stats.finalize()["clip_frac"] > 0  # the clip branch is exercised
    torch.testing.assert_close(total, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(w_micro.grad, w_full.grad, atol=1e-6, rtol=0)
    f, m = full_stats.finalize(), stats.finalize()
    assert m.keys() == f.keys()
    for k in f:
        assert m[k] == pytest.approx(f[k], abs=1e-6), k


def test_per_micro_batch_normalizer_would_break_invariance() -> None:
    # The usual gradient-accumulation bug: each micro-batch takes the mean over its own tokens
    # (7, 8, 7) and the 3 results are averaged, instead of dividing by the batch's 22 tokens.
    # Tokens are then weighted 1/21, 1/24, 1/21: the gradient changes, so the test above can
    # fail.
    d = _setup()
    w_full = d["weight"].clone().requires_grad_()
    full, _ = _loss(d, w_full, (0, B), "token_mean", float(d["mask"].sum()))
    full.backward()

    w_micro = d["weight"].clone().requires_grad_()
    for s, e in SPLITS:
        own = float(d["mask"][s:e].sum())
        loss, _ = _loss(d, w_micro, (s, e), "token_mean", own * len(SPLITS))
        loss.backward()
    assert w_micro.grad is not None and w_full.grad is not None
    assert not torch.allclose(w_micro.grad, w_full.grad, atol=1e-3)
