"""Splitting a batch into micro-batches must not change the loss or the gradient.

A tiny "model": a learnable lm-head W [V, H] applied to fixed hidden states. The batch is split
into micro-batches of unequal row counts, each padded only to its own longest completion (so T
differs too), with the normalizer computed once for the whole batch.

Checked for every policy loss (ppo_clip, gspo, cispo, each with an entropy bonus whose gradient
flows through the chunked log-prob pass), every advantage estimator (outcome ones [B] and the
process one [B, T]), every split-invariant aggregation, with and without dual clip. "bnpo" is
split-dependent by definition; it is checked against its own per-micro-batch formula instead.
"""

import pytest
import torch

from grpo.core import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    LossStats,
    compute_advantages,
    logprobs_from_hidden,
    loss_normalizer,
    process_advantages,
)

B, T, H, V, G = 6, 7, 4, 9, 3
LENGTHS = [7, 2, 5, 1, 3, 4]  # completion lengths; max_completion_length = T = 7
SPLITS = [(0, 1), (1, 4), (4, 6)]  # 1, 3 and 2 rows; token counts 7, 8 and 7
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.4])
INVARIANT = sorted(set(LOSS_AGGREGATIONS) - {"bnpo"})
ESTIMATORS = [*sorted(ADVANTAGE_ESTIMATORS), "process"]


def _advantages(estimator: str) -> torch.Tensor:
    if estimator == "process":
        # two steps per completion, ending at token 1 and at the completion's end
        steps = [[r, 1.0 - r] for r in REWARDS.tolist()]
        ends = [[1, n] for n in LENGTHS]
        return process_advantages(steps, ends, G, LENGTHS).advantages  # [B, T]
    return compute_advantages(estimator, REWARDS, G, scale="group", eps=1e-4).advantages


def _setup(estimator: str = "grpo") -> dict[str, torch.Tensor]:
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
        "adv": _advantages(estimator),
    }


def _loss(
    d: dict[str, torch.Tensor],
    weight: torch.Tensor,
    rows: tuple[int, int],
    aggregation: str,
    normalizer: float,
    dual_clip_c: float | None = None,
    loss_name: str = "ppo_clip",
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    s, e = rows
    t = int(d["mask"][s:e].sum(-1).max())  # pad this micro-batch only to its own longest row
    logp, entropy = logprobs_from_hidden(
        d["hidden"][s:e, :t], weight, d["labels"][s:e, :t], with_entropy=entropy_coef > 0
    )
    adv = d["adv"][s:e]
    if adv.dim() == 2:
        adv = adv[:, :t]  # per-token advantages are trimmed like every other [B, T] tensor
    # GSPO's sequence ratios are close to 1: a 0.05 range clips some sequences and not others
    eps = (0.05, 0.05) if loss_name == "gspo" else (0.2, 0.28)
    return POLICY_LOSSES[loss_name](
        logp,
        d["old"][s:e, :t],
        d["ref"][s:e, :t],
        adv,
        d["mask"][s:e, :t],
        beta=0.04,
        eps_low=eps[0],
        eps_high=eps[1],
        aggregation=aggregation,
        normalizer=normalizer,
        dual_clip_c=dual_clip_c,
        entropy=entropy,
        entropy_coef=entropy_coef,
    )


LOSS_CASES = [
    ("ppo_clip", None, 0.0),
    ("ppo_clip", 1.2, 0.0),
    ("ppo_clip", None, 0.05),
    ("gspo", None, 0.0),
    ("gspo", None, 0.05),
    ("cispo", None, 0.0),
    ("cispo", None, 0.05),
]


@pytest.mark.parametrize("loss_name,dual_clip_c,entropy_coef", LOSS_CASES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("aggregation", INVARIANT)
def test_micro_batches_sum_to_full_batch(
    aggregation: str,
    estimator: str,
    loss_name: str,
    dual_clip_c: float | None,
    entropy_coef: float,
) -> None:
    d = _setup(estimator)
    norm = loss_normalizer(aggregation, B, int(d["mask"].sum()), T)
    kw = {"dual_clip_c": dual_clip_c, "loss_name": loss_name, "entropy_coef": entropy_coef}

    w_full = d["weight"].clone().requires_grad_()
    full, full_stats = _loss(d, w_full, (0, B), aggregation, norm, **kw)
    full.backward()

    w_micro = d["weight"].clone().requires_grad_()
    total = torch.zeros(())
    stats = LossStats.zeros()
    for rows in SPLITS:
        loss, st = _loss(d, w_micro, rows, aggregation, norm, **kw)
        loss.backward()  # gradients accumulate in w_micro.grad, as in a training loop
        total = total + loss.detach()
        stats = stats + st

    assert full_stats.finalize()["clip_frac"] > 0  # the clip branch is exercised
    if dual_clip_c is not None:
        assert full_stats.finalize()["clip_dual_frac"] > 0  # and the dual clip
    torch.testing.assert_close(total, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(w_micro.grad, w_full.grad, atol=1e-6, rtol=0)
    f, m = full_stats.finalize(), stats.finalize()
    assert m.keys() == f.keys()
    for k in f:
        assert m[k] == pytest.approx(f[k], abs=1e-6), k


def test_bnpo_is_the_mean_of_micro_batch_token_means() -> None:
    # bnpo's normaliser is each micro-batch's own token count (7, 8, 7 here), by definition;
    # loss_normalizer gives the number of micro-batches K = 3, so the batch loss is
    # 1/3 * (sum_1/7 + sum_2/8 + sum_3/7) and its gradient the same combination.
    d = _setup()
    k = len(SPLITS)
    norm = loss_normalizer("bnpo", B, int(d["mask"].sum()), T, num_micro_batches=k)
    assert norm == 3.0

    w_micro = d["weight"].clone().requires_grad_()
    w_ref = d["weight"].clone().requires_grad_()
    total = torch.zeros(())
    for s, e in SPLITS:
        loss, _ = _loss(d, w_micro, (s, e), "bnpo", norm)
        loss.backward()
        total = total + loss.detach()
        # the formula, written out with "dapo" (token sum / given normaliser):
        own_tokens = float(d["mask"][s:e].sum())
        ref, _ = _loss(d, w_ref, (s, e), "dapo", own_tokens * k)
        ref.backward()
        torch.testing.assert_close(loss, ref, atol=1e-7, rtol=0)
    assert w_micro.grad is not None and w_ref.grad is not None
    torch.testing.assert_close(w_micro.grad, w_ref.grad, atol=1e-7, rtol=0)

    # ...which is not the full-batch token mean (22 tokens): bnpo depends on the split.
    w_full = d["weight"].clone().requires_grad_()
    full, _ = _loss(d, w_full, (0, B), "dapo", float(d["mask"].sum()))
    full.backward()
    assert w_full.grad is not None
    assert not torch.allclose(w_micro.grad, w_full.grad, atol=1e-3)
    # with a single micro-batch bnpo is dapo
    one, _ = _loss(d, d["weight"], (0, B), "bnpo", 1.0)
    torch.testing.assert_close(one, full.detach(), atol=1e-7, rtol=0)


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
