"""Clipped surrogate, aggregations and grpo_loss against hand values."""

import math

import pytest
import torch

from grpo.core import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATION_ALIASES,
    LOSS_AGGREGATIONS,
    LossStats,
    canonical_aggregation,
    clip_fractions,
    clipped_surrogate,
    compute_advantages,
    grpo_loss,
    loss_normalizer,
    micro_batch_token_mean,
    process_advantages,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)

EPS_LOW, EPS_HIGH = 0.2, 0.28  # clip range [0.8, 1.28]

# Row 0 has A = +1, row 1 has A = -1; ratios chosen on both sides of the clip range.
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 0.9]])
ADV = torch.tensor([1.0, -1.0])
# loss = -min(r A, clip(r) A):
#  row 0 (A=+1): r=1.5 -> min(1.5, 1.28) = 1.28 -> -1.28 (high clip active)
#                r=0.5 -> min(0.5, 0.8)  = 0.5  -> -0.5  (below range, A>0: not clipped)
#                r=1.1 -> inside             -> -1.1
#  row 1 (A=-1): r=0.5 -> min(-0.5, -0.8) = -0.8 -> 0.8 (low clip active)
#                r=1.5 -> min(-1.5, -1.28) = -1.5 -> 1.5 (above range, A<0: not clipped)
#                r=0.9 -> inside              -> 0.9
EXPECTED = torch.tensor([[-1.28, -0.5, -1.1], [0.8, 1.5, 0.9]])


def _logp_pair() -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
    logp = (old + RATIOS.log()).requires_grad_()
    return logp, old


def test_clipped_surrogate_hand_values_and_grad() -> None:
    logp, old = _logp_pair()
    per_token, ratio = clipped_surrogate(logp, old, ADV, EPS_LOW, EPS_HIGH)
    torch.testing.assert_close(ratio, RATIOS, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_token, EXPECTED, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(per_token.sum(), logp)
    # d/dlogp of -r A is -A r where the unclipped branch is active, 0 where clipped:
    #  row 0: [0 (clipped), -0.5, -1.1]; row 1: [0 (clipped), 1.5, 0.9].
    torch.testing.assert_close(
        grad, torch.tensor([[0.0, -0.5, -1.1], [0.0, 1.5, 0.9]]), atol=1e-6, rtol=0
    )


def test_clip_fractions() -> None:
    # one low-clipped token (row 1, t 0), one high-clipped (row 0, t 0), of 6 tokens.
    low, high = clip_fractions(RATIOS, ADV, torch.ones(2, 3), EPS_LOW, EPS_HIGH)
    assert low.item() == pytest.approx(1 / 6) and high.item() == pytest.approx(1 / 6)
    # mask out row 1, t 0 (the low-clipped token): 0 of 5 low, 1 of 5 high.
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    low, high = clip_fractions(RATIOS, ADV, mask, EPS_LOW, EPS_HIGH)
    assert low.item() == 0.0 and high.item() == pytest.approx(1 / 5)


# per-token values with a masked 4th token in row 0 (value 4 must not count) and 2 in row 1.
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_aggregations_by_hand() -> None:
    # seq_mean_token_mean: row means (1+2+3)/3 = 2 and (5+6)/2 = 5.5; (2 + 5.5) / 2 seqs = 3.75.
    assert seq_mean_token_mean(PER_TOKEN, MASK, 2.0).item() == pytest.approx(3.75)
    # token_mean: (6 + 11) / 5 tokens = 3.4.
    assert token_mean(PER_TOKEN, MASK, 5.0).item() == pytest.approx(3.4)
    # seq_mean_token_sum_norm: 17 / (2 seqs * max length 4) = 2.125.
    assert seq_mean_token_sum_norm(PER_TOKEN, MASK, 8.0).item() == pytest.approx(2.125)
    assert loss_normalizer("seq_mean_token_mean", 2, 5, 4) == 2.0
    assert loss_normalizer("token_mean", 2, 5, 4) == 5.0
    assert loss_normalizer("seq_mean_token_sum_norm", 2, 5, 4) == 8.0
    assert loss_normalizer("token_mean", 2, 0, 4) == 1.0  # empty batch: no division by zero
    with pytest.raises(ValueError, match="valid names"):
        loss_normalizer("mean", 2, 5, 4)
    # garbage at masked positions does not leak
    bad = PER_TOKEN.clone()
    bad[0, 3] = math.inf
    bad[1, 3] = math.nan
    for name, norm in (("seq_mean_token_mean", 2.0), ("token_mean", 5.0)):
        assert torch.isfinite(LOSS_AGGREGATIONS[name](bad, MASK, norm))


def test_grpo_loss_hand_value_with_kl() -> None:
    # One token, A = 0 so only the KL term remains; mu = 1 (old None).
    # logp -1, ref -2: k3 = e^-1 - (-1) - 1 = 0.367879; beta 0.1 -> loss 0.0367879 (1 token).
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, stats = grpo_loss(
        logp,
        None,
        torch.tensor([[-2.0]]),
        torch.tensor([0.0]),
        torch.ones(1, 1),
        beta=0.1,
        eps_low=0.2,
        eps_high=0.2,
        aggregation="token_mean",
        normalizer=1.0,
    )
    assert loss.item() == pytest.approx(0.0367879, abs=1e-6)
    out = stats.finalize()
    assert out["kl"] == pytest.approx(0.367879, abs=1e-6)
    assert out["ratio_mean"] == 1.0
    # d k3 / d logp = -exp(ref - logp) + 1 = 1 - e^-1 = 0.632121; times beta = 0.0632121.
    loss.backward()
    assert logp.grad is not None
    assert logp.grad.item() == pytest.approx(0.0632121, abs=1e-6)


def test_grpo_loss_matches_surrogate_by_hand() -> None:
    logp, old = _logp_pair()
    mask = torch.ones(2, 3)
    loss, stats = grpo_loss(
        logp,
        old,
        None,
        ADV,
        mask,
        beta=0.0,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        aggregation="token_mean",
        normalizer=6.0,
    )
    # sum of EXPECTED: -1.28 - 0.5 - 1.1 + 0.8 + 1.5 + 0.9 = 0.32; / 6 tokens = 0.053333.
    assert loss.item() == pytest.approx(0.32 / 6, abs=1e-6)
    out = stats.finalize()
    assert out["clip_low_frac"] == pytest.approx(1 / 6)
    assert out["clip_high_frac"] == pytest.approx(1 / 6)
    assert out["clip_frac"] == pytest.approx(2 / 6)
    # ratio mean (1.5 + 0.5 + 1.1 + 0.5 + 1.5 + 0.9) / 6 = 1.0
    assert out["ratio_mean"] == pytest.approx(1.0)
    assert "kl" not in out


@pytest.mark.parametrize("dual_clip_c", [None, 3.0])
@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
def test_mu_one_ratio_exactly_one_and_grad(aggregation: str, dual_clip_c: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 4, generator=g) * 3).requires_grad_()
    adv = torch.tensor([1.5, -0.5, 0.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    n = loss_normalizer(aggregation, 3, 7, 4)
    loss, stats = grpo_loss(
        logp,
        None,
        None,
        adv,
        mask,
        beta=0.0,
        eps_low=0.2,
        eps_high=0.2,
        aggregation=aggregation,
        normalizer=n,
        dual_clip_c=dual_clip_c,
    )
    assert float(stats.ratio_sum) == 7.0  # ratio exactly 1 on each of 7 tokens
    assert float(stats.clip_low_count) == float(stats.clip_high_count) == 0.0
    assert float(stats.clip_dual_count) == 0.0
    (grad,) = torch.autograd.grad(loss, logp)
    # With ratio = exp(logp - sg(logp)) = 1, d ratio / d logp = 1: the gradient is that of the
    # aggregation of -A * logp, i.e. only through the new log-probs.
    surrogate = logp.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(
        LOSS_AGGREGATIONS[aggregation](-adv[:, None] * surrogate, mask, n), surrogate
    )
    torch.testing.assert_close(grad, want, atol=1e-7, rtol=0)
    if aggregation in ("token_mean", "dapo"):
        # grad = -A * grad(logp) / normalizer on completion tokens, 0 elsewhere.
        torch.testing.assert_close(grad, -adv[:, None] * mask / n, atol=1e-7, rtol=0)
        # loss value: -(1.5 * 4 - 0.5 * 2) / 7 = -5 / 7
        assert loss.item() == pytest.approx(-5 / 7, abs=1e-6)


@pytest.mark.parametrize("dual_clip_c", [None, 1.4])
@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
def test_beta_zero_with_ref_equals_no_ref(aggregation: str, dual_clip_c: float | None) -> None:
    logp, old = _logp_pair()
    ref = old - 0.3
    kw = dict(
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        aggregation=aggregation,
        normalizer=loss_normalizer(aggregation, 2, 6, 3),
        dual_clip_c=dual_clip_c,
    )
    a, sa = grpo_loss(logp, old, ref, ADV, torch.ones(2, 3), beta=0.0, **kw)
    b, sb = grpo_loss(logp, old, None, ADV, torch.ones(2, 3), beta=0.0, **kw)
    assert torch.equal(a, b)
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    assert torch.equal(ga, gb)
    assert "kl" in sa.finalize() and "kl" not in sb.finalize()


def test_argument_errors() -> None:
    logp, old = _logp_pair()
    kw = dict(eps_low=0.2, eps_high=0.2, normalizer=1.0)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old, None, ADV, torch.ones(2, 3), beta=0.04, aggregation="token_mean", **kw)
    with pytest.raises(ValueError, match="valid names: bnpo, dapo, dr_grpo, grpo, seq_mean"):
        grpo_loss(logp, old, None, ADV, torch.ones(2, 3), beta=0.0, aggregation="x", **kw)
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        grpo_loss(
            logp,
            old,
            old,
            ADV,
            torch.ones(2, 3),
            beta=0.1,
            aggregation="token_mean",
            kl_estimator="k9",
            **kw,
        )
    with pytest.raises(ValueError, match="mask shape"):
        grpo_loss(logp, old, None, ADV, torch.ones(2, 4), beta=0.0, aggregation="token_mean", **kw)


def test_garbage_at_masked_positions_stays_out() -> None:
    logp = torch.tensor([[-1.0, 1e4], [-0.5, math.nan]], requires_grad=True)
    old = torch.tensor([[-1.1, -1e4], [-0.4, math.inf]])
    ref = torch.tensor([[-1.2, -1e4], [-0.3, -math.inf]])
    mask = torch.tensor([[1, 0], [1, 0]])
    loss, stats = grpo_loss(
        logp,
        old,
        ref,
        torch.tensor([1.0, -1.0]),
        mask,
        beta=0.1,
        eps_low=0.2,
        eps_high=0.2,
        aggregation="token_mean",
        normalizer=2.0,
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[1, 1] == 0
    assert all(math.isfinite(v) for v in stats.finalize().values())


def _group_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    B, T = 6, 5  # 3 groups of G = 2
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.9, 0.5, 0.5])  # last group: all equal
    old = -torch.rand(B, T, generator=g) * 2
    return {
        "rewards": rewards,
        "logp": old + 0.3 * torch.randn(B, T, generator=g),
        "old": old,
        "ref": old + 0.2 * torch.randn(B, T, generator=g),
        "mask": (torch.arange(T)[None] < torch.tensor([5, 2, 4, 1, 3, 5])[:, None]).long(),
    }


ESTIMATORS = [*sorted(ADVANTAGE_ESTIMATORS), "process"]


def _advantages(estimator: str, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] advantages of an outcome estimator, or [B, T] process advantages of two steps per
    completion (rewards r and 1 - r, ending at token 1 and at the completion's end)."""
    if estimator == "process":
        lengths = mask.sum(-1).tolist()
        steps = [[r, 1.0 - r] for r in rewards.tolist()]
        ends = [[1, n] for n in lengths]
        return process_advantages(steps, ends, 2, mask.shape[1]).advantages
    return compute_advantages(estimator, rewards, 2, scale="group", eps=1e-4).advantages


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
def test_permuting_groups_leaves_loss_unchanged(aggregation: str, estimator: str) -> None:
    d = _group_batch()
    norm = loss_normalizer(aggregation, 6, int(d["mask"].sum()), 5)

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, _ = grpo_loss(
            batch["logp"],
            batch["old"],
            batch["ref"],
            _advantages(estimator, batch["rewards"], batch["mask"]),
            batch["mask"],
            beta=0.04,
            eps_low=0.2,
            eps_high=0.28,
            aggregation=aggregation,
            normalizer=norm,
            dual_clip_c=3.0,
        )
        return loss

    perm = torch.tensor([4, 5, 0, 1, 2, 3])  # groups (2, 0, 1), each kept contiguous
    permuted = {k: v[perm] for k, v in d.items()}
    torch.testing.assert_close(loss_of(permuted), loss_of(d), atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_equal_reward_group_gives_zero_policy_gradient(estimator: str) -> None:
    d = _group_batch()
    logp = d["logp"].clone().requires_grad_()
    adv = _advantages(estimator, d["rewards"], d["mask"])
    loss, _ = grpo_loss(
        logp,
        d["old"],
        None,
        adv,
        d["mask"],
        beta=0.0,
        eps_low=0.2,
        eps_high=0.28,
        aggregation="token_mean",
        normalizer=float(d["mask"].sum()),
        dual_clip_c=3.0,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[4:], torch.zeros(2, 5))  # rows of the all-equal group
    assert grad[:4].abs().sum() > 0


def test_loss_stats_merge_and_tensor_round_trip() -> None:
    a = LossStats.zeros()
    a.num_tokens += 3
    a.clip_low_count += 1
    b = LossStats.zeros()
    b.num_tokens += 1
    b.clip_high_count += 1
    m = a + b
    assert m.finalize()["clip_low_frac"] == 0.25 and m.finalize()["clip_frac"] == 0.5
    back = LossStats.from_tensor(m.to_tensor())
    assert back.finalize() == m.finalize()


def test_dual_clip_hand_values_and_grad() -> None:
    # c = 1.4. Only A < 0 tokens with ratio > c change: row 1 (A = -1), t 1 has r = 1.5:
    # -min(r A, clip(r) A) = 1.5 is capped at -c A = 1.4 (and has no gradient). Row 0 (A = +1)
    # with r = 1.5 is untouched (high clip, as before).
    logp, old = _logp_pair()
    per_token, _ = clipped_surrogate(logp, old, ADV, EPS_LOW, EPS_HIGH, dual_clip_c=1.4)
    want = torch.tensor([[-1.28, -0.5, -1.1], [0.8, 1.4, 0.9]])
    torch.testing.assert_close(per_token, want, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(per_token.sum(), logp)
    torch.testing.assert_close(
        grad, torch.tensor([[0.0, -0.5, -1.1], [0.0, 0.0, 0.9]]), atol=1e-6, rtol=0
    )
    # c = 3 (the usual default) is above every ratio here: same as no dual clip.
    plain, _ = clipped_surrogate(logp, old, ADV, EPS_LOW, EPS_HIGH)
    loose, _ = clipped_surrogate(logp, old, ADV, EPS_LOW, EPS_HIGH, dual_clip_c=3.0)
    assert torch.equal(plain, loose)
    # A = -2, r = 4, c = 3: -min(4 * -2, 1.2 * -2) = 8, capped at 3 * 2 = 6.
    one, _ = clipped_surrogate(
        torch.tensor([[math.log(4.0)]]), torch.zeros(1, 1), torch.tensor([-2.0]), 0.2, 0.2, 3.0
    )
    assert one.item() == pytest.approx(6.0)

    loss, stats = grpo_loss(
        logp,
        old,
        None,
        ADV,
        torch.ones(2, 3),
        beta=0.0,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        aggregation="dapo",
        normalizer=6.0,
        dual_clip_c=1.4,
    )
    # (-1.28 - 0.5 - 1.1 + 0.8 + 1.4 + 0.9) / 6 = 0.22 / 6
    assert loss.item() == pytest.approx(0.22 / 6, abs=1e-6)
    out = stats.finalize()
    assert out["clip_dual_frac"] == pytest.approx(1 / 6)
    assert out["clip_frac"] == pytest.approx(2 / 6)  # the PPO clip counts are unchanged
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
            clipped_surrogate(logp, old, ADV, 0.2, 0.2, dual_clip_c=bad)


def test_aggregation_names_and_aliases() -> None:
    assert LOSS_AGGREGATIONS["grpo"] is seq_mean_token_mean
    assert LOSS_AGGREGATIONS["dapo"] is token_mean
    assert LOSS_AGGREGATIONS["dr_grpo"] is seq_mean_token_sum_norm
    assert LOSS_AGGREGATIONS["bnpo"] is micro_batch_token_mean
    for alias, name in AGGREGATION_ALIASES.items():
        assert LOSS_AGGREGATIONS[alias] is LOSS_AGGREGATIONS[name]
        assert canonical_aggregation(alias) == name
        assert loss_normalizer(alias, 2, 5, 4) == loss_normalizer(name, 2, 5, 4)
    assert canonical_aggregation("bnpo") == "bnpo"
    # bnpo: 17 / 5 tokens of this micro-batch = 3.4, over 2 micro-batches = 1.7.
    assert micro_batch_token_mean(PER_TOKEN, MASK, 2.0).item() == pytest.approx(1.7)
    assert loss_normalizer("bnpo", 2, 5, 4) == 1.0
    assert loss_normalizer("bnpo", 2, 5, 4, num_micro_batches=3) == 3.0
    with pytest.raises(ValueError, match="valid names"):
        canonical_aggregation("mean")


def test_per_token_advantages_match_broadcast_row_advantages() -> None:
    logp, old = _logp_pair()
    ref = old - 0.3
    kw = dict(beta=0.04, eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation="grpo", normalizer=2.0)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    a, sa = grpo_loss(logp, old, ref, ADV, mask, **kw)
    per_token = ADV[:, None].expand(2, 3).clone()
    per_token[0, 2] = math.nan  # garbage under the mask must not leak
    b, sb = grpo_loss(logp, old, ref, per_token, mask, **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    torch.testing.assert_close(ga, gb, atol=0, rtol=0)
    assert sa.finalize() == sb.finalize()
    with pytest.raises(ValueError, match="per-token advantages shape"):
        grpo_loss(logp, old, ref, torch.zeros(2, 2), mask, **kw)
