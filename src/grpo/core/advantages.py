"""Advantages from the rewards of a group of completions of the same prompt.

Layout convention: the batch is group-contiguous. Rows ``[g*G:(g+1)*G]`` are the G completions of
prompt g, so a reward vector of shape [B] reshapes to [B/G, G] without any index bookkeeping.

Rewards may be NaN, meaning "could not be scored" (a reward function returned None). A NaN reward
is left out of its group's statistics and gets advantage 0, so it neither pushes nor pulls.

Two kinds of estimator:

- Outcome estimators (one reward per completion -> one advantage per completion), registered in
  ``ADVANTAGE_ESTIMATORS`` with one call signature so the trainer can call any by name::

      estimator(rewards [B], group_size, *, eps=1e-4, scale=...) -> AdvantageOutput  # adv [B]

  ``scale`` only means something to "grpo" (it picks the std of the denominator); the others
  fix their own scaling by definition and accept ``scale`` only so that the call is uniform.
- The process estimator :func:`process_advantages` (DeepSeekMath section 4.1.3): its input is a
  list of step rewards per completion with the token where each step ends, not a reward vector,
  and its output is one advantage per token [B, T]. It is therefore not in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageOutput",
    "batch_std_advantages",
    "compute_advantages",
    "dr_grpo_advantages",
    "group_advantages",
    "grpo_advantages",
    "process_advantages",
    "rloo_advantages",
]

Scale = Literal["group", "batch", "none"]


@dataclass(frozen=True)
class AdvantageOutput:
    """Advantages and the group statistics worth logging.

    advantages: [B] float32 for outcome estimators ([B, T] for :func:`process_advantages`);
        0 for NaN rewards and for groups without reward variance.
    frac_zero_std: fraction of groups that carry no learning signal: fewer than 2 valid rewards,
        or all valid rewards exactly equal (max - min == 0, no tolerance).
    """

    advantages: Tensor
    frac_zero_std: float


@dataclass(frozen=True)
class _GroupStats:
    """Per-group statistics of rewards viewed as [N, K] (N groups of K values), float64."""

    values: Tensor  # [N, K], NaN = not valid
    valid: Tensor  # [N, K] bool
    count: Tensor  # [N] valid values per group
    mean: Tensor  # [N] mean of the valid values (0 for an empty group)
    centred: Tensor  # [N, K] value - group mean, 0 where not valid
    std: Tensor  # [N] sample std (Bessel, n - 1); 0 for groups with < 2 values
    no_signal: Tensor  # [N] bool: < 2 valid values, or all valid values equal

    def output(self, adv: Tensor) -> AdvantageOutput:
        """Zero the rows without signal and the invalid entries; package with the statistics."""
        adv = torch.where(self.no_signal[:, None] | ~self.valid, 0.0, adv)
        return AdvantageOutput(
            advantages=adv.reshape(-1).to(torch.float32),
            frac_zero_std=float(self.no_signal.to(torch.float64).mean()),
        )


def _group_stats(values: Tensor) -> _GroupStats:
    """Statistics of ``values`` [N, K] per row, NaN entries left out. float64 throughout: rewards
    are few, and exact equality tests need no fp32 noise."""
    r = values.detach().to(torch.float64)
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1)
    mean = torch.where(valid, r, 0.0).sum(dim=1) / n.clamp(min=1)
    centred = torch.where(valid, r - mean[:, None], 0.0)
    # Sample variance (Bessel): sum of squared deviations / (n - 1).
    std = (centred.square().sum(dim=1) / (n - 1).clamp(min=1)).sqrt()
    inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
    r_max = torch.where(valid, r, -inf).amax(dim=1) if r.shape[1] else n.to(r.dtype)
    r_min = torch.where(valid, r, inf).amin(dim=1) if r.shape[1] else n.to(r.dtype)
    no_signal = (n < 2) | (r_max - r_min == 0)
    return _GroupStats(r, valid, n, mean, centred, std, no_signal)


def _check_rewards(rewards: Tensor, group_size: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch size {rewards.numel()} is not a multiple of group_size {group_size}; "
            "the batch must hold whole groups"
        )


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: Scale = "group",
    eps: float = 1e-4,
) -> AdvantageOutput:
    """Group-relative advantages, DeepSeekMath (arXiv 2402.03300) section 4.1.2 (outcome
    supervision): ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``.

    Args:
        rewards: [B] rewards, B = num_prompts * G, group-contiguous; NaN = "not scored".
        group_size: G, completions per prompt.
        scale: "group" divides by the group's std (the paper); "batch" divides by the std of all
            valid rewards in the batch (still centred per group); "none" only centres (Dr. GRPO,
            arXiv 2503.20783 section 3.1, which argues the std division biases towards
            too-easy/too-hard prompts).
        eps: added to the std so near-constant groups do not explode.

    Returns:
        AdvantageOutput with advantages [B] float32.

    The std is the *sample* std (Bessel's correction, divide by n-1), the same as
    ``torch.Tensor.std()`` which TRL's GRPOTrainer uses, so users can compare numbers with the
    most common reference implementation. (The seed's worked example "std 0.32" for rewards
    0.9, 0.3, 0.8, 0.2 is neither: sample std is 0.351, population std 0.304.)

    A group whose valid rewards are all equal gets exactly 0, not eps-scaled rounding noise:
    the mean of equal floats need not round back to the same float.
    """
    _check_rewards(rewards, group_size)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    s = _group_stats(rewards.view(-1, group_size))  # [B/G, G]
    if scale == "group":
        adv = s.centred / (s.std[:, None] + eps)
    elif scale == "batch":
        flat = s.values[s.valid]
        batch_std = flat.std() if flat.numel() >= 2 else flat.new_zeros(())
        adv = s.centred / (batch_std + eps)
    else:
        adv = s.centred
    return s.output(adv)


def grpo_advantages(
    rewards: Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-4
) -> AdvantageOutput:
    """GRPO group z-score (DeepSeekMath arXiv 2402.03300 section 4.1.2).
    rewards: [B] -> advantages [B]. ``scale`` picks the std of the denominator (see
    :func:`group_advantages`): "group" (the paper), "batch" (= estimator "batch_std") or
    "none" (= estimator "dr_grpo")."""
    return group_advantages(rewards, group_size, scale=scale, eps=eps)


def dr_grpo_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-4, scale: str | None = None
) -> AdvantageOutput:
    """Dr. GRPO (arXiv 2503.20783 section 3.1): ``A_i = r_i - mean(r_group)``, no std division.
    rewards: [B] -> advantages [B]. ``eps`` and ``scale`` are accepted for the uniform call
    signature and ignored (there is no division)."""
    return group_advantages(rewards, group_size, scale="none")


def batch_std_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-4, scale: str | None = None
) -> AdvantageOutput:
    """Group mean-centred, divided by the std of the whole batch:
    ``A_i = (r_i - mean(r_group)) / (std(all valid rewards of the batch) + eps)``.

    The centring is per group (GRPO, DeepSeekMath section 4.1.2); the batch-level std is the
    scaling of "PPO Lite" as TRL's ``scale_rewards="batch"`` documents it (Liu et al. 2025,
    "Tricks or Traps? A Deep Dive into RL for LLM Reasoning", arXiv 2508.08221). It keeps the
    relative weight of prompts with different reward spread (no per-group difficulty bias) yet
    normalises the overall scale. The std is the sample std over all valid rewards of the
    batch (not of the centred values). ``scale`` is ignored. rewards: [B] -> advantages [B].

    The batch here is what the trainer passes: compute it once over the whole rollout batch,
    never per micro-batch or per rank.
    """
    return group_advantages(rewards, group_size, scale="batch", eps=eps)


def rloo_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-4, scale: str | None = None
) -> AdvantageOutput:
    """REINFORCE leave-one-out: each completion's baseline is the mean reward of the *other*
    valid completions of its group (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline
    for free!"; Ahmadian et al. 2024, arXiv 2402.14740 eq. 6)::

        A_i = r_i - 1/(n-1) * sum_{j != i} r_j  =  n/(n-1) * (r_i - mean(r_group))

    where n is the number of valid (non-NaN) rewards of the group; NaN rewards are excluded from
    the baselines and get advantage 0. A group with fewer than 2 valid rewards has no
    leave-one-out baseline: all its advantages are 0 (and it counts in ``frac_zero_std``).
    No std division; ``eps`` and ``scale`` are ignored. rewards: [B] -> advantages [B].
    """
    _check_rewards(rewards, group_size)
    s = _group_stats(rewards.view(-1, group_size))
    n = s.count.to(torch.float64)
    factor = n / (n - 1).clamp(min=1)  # n/(n-1); groups with n < 2 are zeroed by output()
    return s.output(s.centred * factor[:, None])


# Name -> estimator(rewards [B], group_size, *, eps=..., scale=...) -> AdvantageOutput.
# Add outcome variants here; the process estimator is separate (different input).
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., AdvantageOutput]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(
    name: str, rewards: Tensor, group_size: int, **kwargs: object
) -> AdvantageOutput:
    """Look up an outcome estimator by name and apply it. rewards: [B] -> AdvantageOutput.

    Every registered estimator accepts ``eps`` and ``scale`` keywords, so
    ``compute_advantages(name, rewards, G, scale=..., eps=...)`` works for any name.
    """
    try:
        estimator = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        hint = (
            "; 'process' takes step rewards, call process_advantages() instead"
            if name == "process"
            else ""
        )
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid names: {valid}{hint}"
        ) from None
    return estimator(rewards, group_size, **kwargs)


# ---- process supervision ------------------------------------------------------------------------


def process_advantages(
    step_rewards: Sequence[Sequence[float | None]],
    step_ends: Sequence[Sequence[int]],
    group_size: int,
    num_tokens: Sequence[int] | int,
    eps: float = 1e-4,
) -> AdvantageOutput:
    """Per-token advantages from step rewards, DeepSeekMath (arXiv 2402.03300) section 4.1.3
    (process supervision).

    Completion i of a group has steps j = 1..K_i with rewards r_i^j, step j ending at token
    index(j). All step rewards of the group are normalised together::

        r~_i^j = (r_i^j - mean(R)) / (std(R) + eps),   R = all step rewards of the group's G
                                                        completions (sample std, Bessel)
        A_{i,t} = sum over steps j of completion i with index(j) >= t of r~_i^j

    so a token's advantage is the sum of the normalised rewards of its own step and of every
    later step.

    Args:
        step_rewards: B lists (group-contiguous, like rewards [B]); list i holds the rewards of
            completion i's steps. None or NaN = step not scored: left out of mean/std, adds 0.
            An empty list (no steps) gives that completion advantage 0 everywhere.
        step_ends: B lists aligned with step_rewards: the *exclusive* end token offset of each
            step, i.e. the number of completion tokens up to and including the step's last
            token (a step covering tokens 3..5 has end 6; "index(j)" of the paper is end - 1).
            Steps need not be sorted. An end beyond the completion's length is clamped to it; an
            end of 0 touches no token.
        group_size: G.
        num_tokens: completion length of each row (list of B ints; output width
            T = max(1, max(num_tokens)), like the trainer's batch), or one int T for all rows.
        eps: added to the std.

    Returns:
        AdvantageOutput with advantages [B, T] float32: 0 on tokens after the completion's last
        step end (no step ends at or after them) and on padding. frac_zero_std is
        computed over the groups' step rewards: a group with fewer than 2
        valid step rewards, or all of them equal, gets advantage 0 everywhere.

    Use with ``grpo_loss`` (it accepts [B, T] advantages). Tokens after the last step (e.g. the
    ``<answer>`` block) get no signal; a reward function that wants the outcome to count adds a
    final step ending at the last token.
    """
    B = len(step_rewards)
    if len(step_ends) != B:
        raise ValueError(f"{len(step_ends)} step_ends lists for {B} step_rewards lists")
    if group_size < 1 or B % group_size != 0:
        raise ValueError(
            f"batch size {B} is not a multiple of group_size {group_size}; "
            "the batch must hold whole groups"
        )
    if isinstance(num_tokens, int):
        lengths = [num_tokens] * B
        T = num_tokens
    else:
        lengths = [int(n) for n in num_tokens]
        if len(lengths) != B:
            raise ValueError(f"{len(lengths)} num_tokens for {B} completions")
        T = max([1, *lengths])
    if any(n < 0 for n in lengths) or T < 0:
        raise ValueError("num_tokens must be >= 0")

    rows: list[int] = []
    ends: list[int] = []
    values: list[float] = []
    for i, (rs, es) in enumerate(zip(step_rewards, step_ends, strict=True)):
        if len(rs) != len(es):
            raise ValueError(
                f"completion {i}: {len(rs)} step rewards but {len(es)} step ends; give one end "
                "offset per step"
            )
        for r, e in zip(rs, es, strict=True):
            if isinstance(e, bool) or int(e) != e or e < 0:
                raise ValueError(f"completion {i}: step end {e!r} is not an integer >= 0")
            rows.append(i)
            ends.append(min(int(e), lengths[i]))
            values.append(float("nan") if r is None else float(r))

    num_groups = B // group_size
    # Scatter the steps into [num_groups, max steps per group] for the group statistics.
    group_of = [i // group_size for i in rows]
    per_group = [0] * num_groups
    slot: list[int] = []
    for g in group_of:
        slot.append(per_group[g])
        per_group[g] += 1
    width = max([0, *per_group])
    table = torch.full((num_groups, width), float("nan"), dtype=torch.float64)
    if values:
        table[torch.tensor(group_of), torch.tensor(slot)] = torch.tensor(
            values, dtype=torch.float64
        )
    s = _group_stats(table)
    # r~ = (r - mean(R)) / (std(R) + eps); 0 for invalid steps and groups without signal.
    norm = torch.where(s.no_signal[:, None] | ~s.valid, 0.0, s.centred / (s.std[:, None] + eps))

    adv = torch.zeros(B, T + 1, dtype=torch.float64)
    if values:
        step_norm = norm[torch.tensor(group_of), torch.tensor(slot)]
        # A_{i,t} = sum_{j: end_j > t} r~_j: put r~_j at column end_j - 1 and take the reverse
        # cumulative sum over t. An end of 0 lands in the spare column T (index -1), dropped.
        cols = torch.tensor(ends) - 1
        cols = torch.where(cols < 0, T, cols)
        adv.index_put_((torch.tensor(rows), cols), step_norm, accumulate=True)
    adv = adv[:, :T].flip(1).cumsum(1).flip(1)

    return AdvantageOutput(
        advantages=adv.to(torch.float32),
        frac_zero_std=float(s.no_signal.to(torch.float64).mean()) if num_groups else 0.0,
    )
