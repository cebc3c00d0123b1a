"""GSPO and CISPO: values by hand, gradients against independent float64 references, the
entropy bonus, the registry and its documented defaults.

The references are written differently from the implementations: GSPO as the paper's literal
sequence-level objective (one ratio per sequence, no per-token form) under plain autograd and
as its hand-derived gradient; CISPO as its hand-derived gradient and a loop over tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

from grpo.core import (
    POLICY_LOSS_DEFAULTS,
    POLICY_LOSSES,
    cispo_loss,
    grpo_loss,
    gspo_loss,
    loss_normalizer,
    policy_loss_fn,
    sequence_log_ratio,
)

F64 = torch.float64


def _grad(loss_fn, logp: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x = logp.clone().requires_grad_()
    loss, stats = loss_fn(x, **kw)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g, stats.finalize()


# ---- GSPO by hand ---------------------------------------------------------------------------


def _gspo_hand_batch() -> dict[str, torch.Tensor]:
    # sequence 0: 3 tokens, logp - old = 0.1, -0.1, 0.3 -> mean 0.1, s0 = e^0.1 = 1.105171
    # sequence 1: 1 token (then padding), logp - old = 0.5 -> s1 = e^0.5 = 1.648721
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, -3.0]], dtype=F64)
    delta = torch.tensor([[0.1, -0.1, 0.3], [0.5, 7.0, -7.0]], dtype=F64)  # padding: garbage
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return {"logp": old + delta, "old": old, "mask": mask}


def test_gspo_by_hand_unclipped_and_clipped() -> None:
    d = _gspo_hand_batch()
    s0, s1 = math.exp(0.1), math.exp(0.5)
    common = {"ref_logp": None, "mask": d["mask"], "beta": 0.0, "normalizer": 2.0}
    # eps 0.2/0.7: s0 = 1.105 and s1 = 1.649 are both inside [0.8, 1.7]
    # A = (1, -1): loss = -(1/2)(s0 * 1 + s1 * -1) = (1.648721 - 1.105171)/2 = 0.271775
    # d/dlogp_0t = -(1/2) A0 s0 / 3 = -0.184195 each; d/dlogp_10 = -(1/2) A1 s1 = 0.824361
    loss, g, st = _grad(
        gspo_loss,
        d["logp"],
        old_logp=d["old"],
        advantages=torch.tensor([1.0, -1.0], dtype=F64),
        eps_low=0.2,
        eps_high=0.7,
        **common,
    )
    assert loss.item() == pytest.approx((s1 - s0) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.271775, abs=1e-6)
    want = torch.tensor([[-s0 / 6] * 3, [s1 / 2, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert st["clip_frac"] == 0.0
    # ratio_mean counts tokens: (3 s0 + s1) / 4 = (3.315513 + 1.648721)/4 = 1.241059
    assert st["ratio_mean"] == pytest.approx((3 * s0 + s1) / 4, abs=1e-9)

    # A = (1, +1) with eps_high 0.2: s1 = 1.649 > 1.2 is clipped (term -1.2, no gradient)
    # loss = -(1/2)(s0 + 1.2) = -1.152585; sequence 1 is 1 token of 4 -> clip_high_frac 0.25
    loss, g, st = _grad(
        gspo_loss,
        d["logp"],
        old_logp=d["old"],
        advantages=torch.tensor([1.0, 1.0], dtype=F64),
        eps_low=0.2,
        eps_high=0.2,
        **common,
    )
    assert loss.item() == pytest.approx(-(s0 + 1.2) / 2, abs=1e-12)
    want = torch.tensor([[-s0 / 6] * 3, [0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert st["clip_high_frac"] == 0.25 and st["clip_low_frac"] == 0.0

    assert sequence_log_ratio(d["logp"], d["old"], d["mask"]).tolist() == pytest.approx(
        [0.1, 0.5], abs=1e-12
    )


def test_gspo_on_policy_is_minus_a_grad_logp() -> None:
    # old_logp None (mu = 1): s = 1, gradient -A / (G |o_i|) per token, like ppo_clip's
    d = _gspo_hand_batch()
    kw = {
        "old_logp": None,
        "ref_logp": None,
        "advantages": torch.tensor([0.5, -2.0], dtype=F64),
        "mask": d["mask"],
        "beta": 0.0,
        "aggregation": "grpo",
        "normalizer": 2.0,
    }
    _, g, st = _grad(gspo_loss, d["logp"], **kw)
    _, g_ppo, _ = _grad(grpo_loss, d["logp"], eps_low=0.2, eps_high=0.2, **kw)
    # -(1/2) * 0.5 / 3 = -0.083333 on sequence 0; -(1/2) * -2 / 1 = 1.0 on sequence 1
    want = torch.tensor([[-1 / 12] * 3, [1.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_ppo, want, atol=1e-12, rtol=0)
    assert st["ratio_mean"] == 1.0


# ---- GSPO against the literal sequence-level objective ---------------------------------------


def _random_batch(seed: int, b: int = 8, t: int = 6, scale: float = 0.02) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3
    logp = old + scale * torch.randn(b, t, generator=g, dtype=F64)
    ref = old + 0.1 * torch.randn(b, t, generator=g, dtype=F64)
    adv = torch.randn(b, generator=g, dtype=F64)
    return {"logp": logp, "old": old, "ref": ref, "mask": mask, "adv": adv}


def _gspo_literal(logp, old, adv, mask, eps_low, eps_high, agg: str) -> torch.Tensor:
    """arXiv 2507.18071 eq. 5 and 7, one ratio per sequence, negated; "grpo": 1/G sum_i;
    "dapo": each sequence weighted by its length over the batch's token count."""
    m = mask.to(F64)
    n = m.sum(-1)
    s = torch.exp(((logp - old) * m).sum(-1) / n)
    term = -torch.minimum(s * adv, torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv)  # [B]
    if agg == "grpo":
        return term.sum() / len(adv)
    return (term * n).sum() / m.sum()


def _gspo_hand_gradient(logp, old, adv, mask, eps_low, eps_high, agg: str) -> torch.Tensor:
    """d L / d logp_it = -w_i A_i s_i / |o_i| on unclipped sequences (eq. 10), 0 on clipped
    ones; w_i = 1/G ("grpo") or |o_i| / N ("dapo")."""
    m = mask.to(F64)
    n = m.sum(-1)
    s = torch.exp(((logp - old) * m).sum(-1) / n)
    clipped = ((adv > 0) & (s > 1 + eps_high)) | ((adv < 0) & (s < 1 - eps_low))
    w = torch.full_like(n, 1 / len(adv)) if agg == "grpo" else n / m.sum()
    per_seq = torch.where(clipped, 0.0, -w * adv * s / n)
    return per_seq[:, None] * m


@pytest.mark.parametrize("agg", ["grpo", "dapo"])
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.01, 0.01)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gspo_gradient_matches_the_sequence_level_reference(seed: int, eps, agg: str) -> None:
    d = _random_batch(seed)
    lo, hi = eps
    norm = loss_normalizer(agg, 8, int(d["mask"].sum()), 6)
    loss, g, st = _grad(
        gspo_loss,
        d["logp"],
        old_logp=d["old"],
        ref_logp=None,
        advantages=d["adv"],
        mask=d["mask"],
        beta=0.0,
        eps_low=lo,
        eps_high=hi,
        aggregation=agg,
        normalizer=norm,
    )
    x = d["logp"].clone().requires_grad_()
    ref = _gspo_literal(x, d["old"], d["adv"], d["mask"], lo, hi, agg)
    (g_ref,) = torch.autograd.grad(ref, x)
    hand = _gspo_hand_gradient(d["logp"], d["old"], d["adv"], d["mask"], lo, hi, agg)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(g, hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(g, hand, atol=1e-12, rtol=0)  # float64: far below 1e-5
    # both clipped and unclipped sequences occur with the tight range
    if eps == (3e-4, 4e-4):
        assert 0 < st["clip_frac"] < 1


def test_gspo_token_with_per_token_advantages() -> None:
    # With A [B, T] equal along each row, the per-token form is GSPO itself.
    d = _random_batch(3)
    kw = {
        "old_logp": d["old"],
        "ref_logp": None,
        "mask": d["mask"],
        "beta": 0.0,
        "eps_low": 0.01,
        "eps_high": 0.01,
        "aggregation": "grpo",
        "normalizer": 8.0,
    }
    _, g_row, _ = _grad(gspo_loss, d["logp"], advantages=d["adv"], **kw)
    _, g_tok, _ = _grad(gspo_loss, d["logp"], advantages=d["adv"][:, None].expand(-1, 6), **kw)
    torch.testing.assert_close(g_row, g_tok, atol=1e-15, rtol=0)


# ---- CISPO -----------------------------------------------------------------------------------


def test_cispo_by_hand() -> None:
    # one sequence of 2 tokens, A = 2: logp = (-1, -2), old = (-1.5, -1)
    # r = e^0.5 = 1.648721, e^-1 = 0.367879
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    old = torch.tensor([[-1.5, -1.0]], dtype=F64)
    kw = {
        "old_logp": old,
        "ref_logp": None,
        "advantages": torch.tensor([2.0], dtype=F64),
        "mask": torch.ones(1, 2),
        "beta": 0.0,
        "normalizer": 2.0,
    }
    # eps 0.2 / 0.28: weights clip(1.648721) = 1.28, clip(0.367879) = 0.8
    # loss = -(1/2)(1.28 * 2 * -1 + 0.8 * 2 * -2) = -(1/2)(-2.56 - 3.2) = 2.88
    # d/dlogp = -(1/2) w A = -1.28, -0.8; both weights truncated (one low, one high)
    loss, g, st = _grad(cispo_loss, logp, eps_low=0.2, eps_high=0.28, **kw)
    assert loss.item() == pytest.approx(2.88, abs=1e-12)
    torch.testing.assert_close(g, torch.tensor([[-1.28, -0.8]], dtype=F64), atol=1e-12, rtol=0)
    assert st["clip_low_frac"] == 0.5 and st["clip_high_frac"] == 0.5
    # defaults (no lower bound, cap 5): weights 1.648721 and 0.367879
    # loss = -(1/2)(1.648721 * 2 * -1 + 0.367879 * 2 * -2) = 1.648721 + 0.735759 = 2.384480
    loss, g, st = _grad(cispo_loss, logp, **kw)
    r = torch.tensor([[math.exp(0.5), math.exp(-1.0)]], dtype=F64)
    assert loss.item() == pytest.approx(2.384480, abs=1e-6)
    torch.testing.assert_close(g, -r, atol=1e-12, rtol=0)
    assert st["clip_frac"] == 0.0
    # a ratio of 6 is capped at 5: d/dlogp = -(1/2) * 5 * 2 = -5
    _, g, _ = _grad(cispo_loss, torch.tensor([[-1.5 + math.log(6), -1.0]], dtype=F64), **kw)
    assert g[0, 0].item() == pytest.approx(-5.0, abs=1e-12)


@pytest.mark.parametrize("agg", ["dapo", "grpo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cispo_gradient_matches_the_hand_derived_one(seed: int, agg: str) -> None:
    d = _random_batch(seed, scale=0.5)  # ratios spread over ~0.3..3: both bounds active
    lo, hi = 0.2, 0.28
    n_tok = int(d["mask"].sum())
    norm = loss_normalizer(agg, 8, n_tok, 6)
    loss, g, _ = _grad(
        cispo_loss,
        d["logp"],
        old_logp=d["old"],
        ref_logp=None,
        advantages=d["adv"],
        mask=d["mask"],
        beta=0.0,
        eps_low=lo,
        eps_high=hi,
        aggregation=agg,
        normalizer=norm,
    )
    # eq. 4: L = -1/N sum_it sg(clip(r_it)) A_i log pi_it, so dL/dlogp_it = -clip(r_it) A_i / N
    # ("dapo", N = tokens), or -clip(r_it) A_i / (G |o_i|) ("grpo"); a loop over the tokens
    want = torch.zeros(8, 6, dtype=F64)
    value = 0.0
    for i in range(8):
        n_i = int(d["mask"][i].sum())
        for t in range(n_i):
            r = math.exp(d["logp"][i, t].item() - d["old"][i, t].item())
            w = min(max(r, 1 - lo), 1 + hi)
            denom = n_tok if agg == "dapo" else 8 * n_i
            want[i, t] = -w * d["adv"][i].item() / denom
            value += -w * d["adv"][i].item() * d["logp"][i, t].item() / denom
    torch.testing.assert_close(g, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert loss.item() == pytest.approx(value, abs=1e-12)


# ---- entropy bonus, KL, registry ----------------------------------------------------------


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo"])
def test_entropy_bonus_and_kl_add_their_own_gradients(name: str) -> None:
    d = _random_batch(5)
    ent = torch.rand(8, 6, dtype=F64)
    n_tok = float(d["mask"].sum())
    kw = {
        "old_logp": d["old"],
        "ref_logp": d["ref"],
        "advantages": d["adv"],
        "mask": d["mask"],
        "eps_low": 0.2,
        "eps_high": 0.2,
        "aggregation": "dapo",
        "normalizer": n_tok,
    }
    fn = POLICY_LOSSES[name]
    e = ent.clone().requires_grad_()
    loss, _ = fn(d["logp"], beta=0.0, entropy=e, entropy_coef=0.03, **kw)
    (g_ent,) = torch.autograd.grad(loss, e)
    # - 0.03 * sum_it m H / N: dL/dH_it = -0.03 / N on completion tokens, 0 on padding
    torch.testing.assert_close(g_ent, -0.03 * d["mask"].to(F64) / n_tok, atol=1e-15, rtol=0)
    base, _ = fn(d["logp"], beta=0.0, **kw)
    assert (base - loss).item() == pytest.approx(0.03 * (ent * d["mask"]).sum().item() / n_tok)

    # beta * k3 KL adds (1 - exp(ref - logp)) * beta / N to d/dlogp (k3 = e^x - x - 1, x =
    # ref - logp, d/dlogp = 1 - e^x)
    _, g0, _ = _grad(fn, d["logp"], beta=0.0, **kw)
    _, g1, st = _grad(fn, d["logp"], beta=0.1, **kw)
    kl_grad = 0.1 * (1 - torch.exp(d["ref"] - d["logp"])) * d["mask"] / n_tok
    torch.testing.assert_close(g1 - g0, kl_grad, atol=1e-12, rtol=0)
    assert st["kl"] > 0


def test_registry_and_documented_defaults() -> None:
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo", "cispo"}
    assert POLICY_LOSSES["ppo_clip"] is grpo_loss
    assert policy_loss_fn("gspo") is gspo_loss
    with pytest.raises(ValueError, match="ppo_clip, gspo, cispo"):
        policy_loss_fn("sapo")
    g, c = POLICY_LOSS_DEFAULTS["gspo"], POLICY_LOSS_DEFAULTS["cispo"]
    assert (g.eps_low, g.eps_high, g.aggregation) == (3e-4, 4e-4, "grpo")
    assert (c.eps_low, c.eps_high, c.aggregation) == (1.0, 4.0, "dapo")
    assert POLICY_LOSS_DEFAULTS["ppo_clip"].as_dict() == {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "aggregation": "grpo",
    }


def test_errors_name_the_argument() -> None:
    d = _random_batch(0)
    kw = {
        "old_logp": d["old"],
        "ref_logp": None,
        "advantages": d["adv"],
        "mask": d["mask"],
        "beta": 0.0,
        "aggregation": "grpo",
        "normalizer": 8.0,
    }
    for fn in (gspo_loss, cispo_loss):
        with pytest.raises(ValueError, match="dual_clip_c"):
            fn(d["logp"], dual_clip_c=3.0, **kw)
        with pytest.raises(ValueError, match="entropy"):
            fn(d["logp"], entropy_coef=0.1, **kw)
        with pytest.raises(ValueError, match="old_logp shape"):
            fn(d["logp"], **{**kw, "old_logp": d["old"][:, :3]})
        with pytest.raises(ValueError, match="unknown loss aggregation"):
            fn(d["logp"], **{**kw, "aggregation": "mean"})
