"""Making one step's experience: sample -> score -> (dynamic sampling) -> tensors ->
(reference log-probs) -> (critic values) -> advantages. Returns a batch that is ready for the
policy update (and the critic's, for advantage=gae).

Every formula lives in ``grpo.core``; this module moves data between the stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from grpo import interrupt
from grpo.config import GRPOConfig
from grpo.core import (
    AdvantageOutput,
    compute_advantages,
    gae_advantages,
    informative_groups,
    kl_penalty,
    kl_reward_penalty,
    mask_truncated,
    masked_sums,
    process_advantages,
    token_level_rewards,
    whiten,
)
from grpo.rewards import RewardScores, completion_text, score_completions
from grpo.rewards.step_rewards import steps_to_token_ends
from grpo.rewards.step_scoring import score_steps
from grpo.rollout.base import Completion, SamplingSettings
from grpo.train.batch import RolloutBatch, build_batch
from grpo.train.distributed import all_reduce_floats, any_rank
from grpo.train.setup import Run
from grpo.train.state import TrainState
from grpo.train.update import batch_logprobs, batch_values

# Keyword arguments the trainer gives reward functions besides the dataset columns.
TRAINER_COLUMNS = ("group_ids", "completion_ids", "completion_lengths")


def sampling_settings(cfg: GRPOConfig, seed: int | None) -> SamplingSettings:
    r = cfg.rollout
    return SamplingSettings(
        n=cfg.algorithm.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_new_tokens=r.max_new_tokens,
        stop=tuple(r.stop),
        ignore_eos=r.ignore_eos,
        seed=seed,
    )


def round_seed(cfg: GRPOConfig, step: int, round_: int) -> int:
    """The sampling seed of one round of one step: a function of the step alone, so a resumed
    run samples what the uninterrupted one did."""
    return cfg.train.seed * 1_000_003 + step * 101 + round_


@dataclass
class Sampled:
    """Prompts of one step with their G completions each (group-contiguous) and scores."""

    row_ids: list[int]  # one dataset row per group
    completions: list[Completion]  # B = len(row_ids) * G
    scores: RewardScores

    def groups(self, keep: list[int], G: int) -> Sampled:
        idx = [g * G + j for g in keep for j in range(G)]
        t = torch.tensor(idx, dtype=torch.long)
        return Sampled(
            row_ids=[self.row_ids[g] for g in keep],
            completions=[self.completions[i] for i in idx],
            scores=RewardScores(
                total=self.scores.total[t],
                per_function={k: v[t] for k, v in self.scores.per_function.items()},
                errors=self.scores.errors,
                extra=self.scores.extra,
            ),
        )

    @staticmethod
    def concat(parts: list[Sampled]) -> Sampled:
        first = parts[0].scores
        return Sampled(
            row_ids=[r for p in parts for r in p.row_ids],
            completions=[c for p in parts for c in p.completions],
            scores=RewardScores(
                total=torch.cat([p.scores.total for p in parts]),
                per_function={
                    k: torch.cat([p.scores.per_function[k] for p in parts])
                    for k in first.per_function
                },
                errors=first.errors,
                extra=first.extra,
            ),
        )


@dataclass
class Experience:
    """One step's training batch and what the logs need about how it was made."""

    batch: RolloutBatch  # tensors with advantages (and ref log-probs when beta > 0)
    sampled: Sampled  # the groups trained on
    first_round: Sampled  # the first sampling round (its rewards are the step's reward metrics)
    truncated: torch.Tensor  # [B] bool: cut at max_new_tokens
    advantage: AdvantageOutput
    beta: float  # the KL weight in the loss (0 when the KL is in the reward)
    generated_tokens: int  # every round's completion tokens, the discarded groups' included
    metrics: dict[str, float] = field(default_factory=dict)


def reward_inputs(
    run: Run, row_ids: list[int], completions: list[Completion]
) -> tuple[list[Any], list[str], dict[str, list[Any]]]:
    """(prompts, completion texts, columns) aligned with the B completions."""
    G, pc = run.cfg.algorithm.group_size, run.cfg.data.prompt_column
    rows = [run.train_rows[i] for i in row_ids for _ in range(G)]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != pc}
    clash = sorted(set(columns) & set(TRAINER_COLUMNS))
    if clash:
        raise ValueError(
            f"dataset columns {clash} clash with arguments the trainer passes to reward "
            "functions; rename them"
        )
    columns["group_ids"] = [g for g in range(len(row_ids)) for _ in range(G)]
    columns["completion_ids"] = [c.token_ids for c in completions]
    columns["completion_lengths"] = [len(c.token_ids) for c in completions]
    return [r[pc] for r in rows], [c.text for c in completions], columns


def sample_and_score(
    run: Run, step: int, row_ids: list[int], round_: int, seed_offset: int = 0
) -> Sampled:
    """Generate G completions for each row and score them. ``seed_offset``: the position of
    the first row in the step's whole batch, which fixes each prompt's random stream."""
    G = run.cfg.algorithm.group_size
    settings = replace(
        sampling_settings(run.cfg, round_seed(run.cfg, step, round_)), seed_offset=seed_offset
    )
    interrupt.checkpoint()
    with run.timer("generate"):
        groups = run.engine.generate([run.train_prompt_ids[i] for i in row_ids], settings)
    interrupt.checkpoint()
    completions = [c for g in groups for c in g]
    with run.timer("score"):
        prompts, texts, columns = reward_inputs(run, row_ids, completions)
        scores = score_completions(
            run.reward_fns, prompts, texts, columns, row_ids=[i for i in row_ids for _ in range(G)]
        )
    return Sampled(row_ids, completions, scores)


def draw(run: Run, state: TrainState, step: int, round_: int, *, generate: bool = True):
    """One round's prompts: every rank draws the step's whole batch from the shared sampler
    (so the samplers stay equal) and keeps its own contiguous share of it."""
    world, G = run.world, run.cfg.algorithm.group_size
    want = run.cfg.train.batch_size // G
    share = want // world.world_size
    rows = state.sampler.take(want)[world.rank * share : (world.rank + 1) * share]
    if not generate:
        return None
    return sample_and_score(run, step, rows, round_, seed_offset=world.rank * share)


def collect_rollout(
    run: Run, state: TrainState, step: int
) -> tuple[Sampled, Sampled, list[Sampled]]:
    """(training batch, first sampling round, every round) of this rank.

    Without dynamic sampling, one round. With it (DAPO, arXiv 2503.14476 section 3.2), groups
    whose rewards all agree carry no signal and are dropped; new prompts are sampled for up to
    ``dynamic_sampling_rounds`` extra rounds until the batch has its number of groups. If the
    rounds run out, the step trains on the informative groups found (or, if none, on the
    first round, whose groups then contribute KL only). With several ranks the rounds are
    taken together: a rank whose share is full skips generation but still advances the
    sampler, until every rank is full or the rounds run out.
    """
    cfg, G = run.cfg, run.cfg.algorithm.group_size
    want = cfg.train.batch_size // G // run.world.world_size
    first = draw(run, state, step, 0)
    if cfg.algorithm.dynamic_sampling_rounds == 0:
        return first, first, [first]
    kept: list[Sampled] = []
    every = [first]
    have, rounds, current = 0, 1, first
    while True:
        if current is not None:
            informative = informative_groups(current.scores.total, G).tolist()
            keep = [g for g, ok in enumerate(informative) if ok][: want - have]
            if keep:
                kept.append(current.groups(keep, G))
                have += len(keep)
        if not any_rank(run.world, have < want) or rounds > cfg.algorithm.dynamic_sampling_rounds:
            break
        current = draw(run, state, step, rounds, generate=have < want)
        if current is not None:
            every.append(current)
        rounds += 1
    batch = Sampled.concat(kept) if kept else first
    return batch, first, every


def make_experience(run: Run, state: TrainState, step: int, beta: float) -> Experience:
    """Sample and score a step's groups, lay them out as tensors, take the reference
    log-probs (beta > 0), and compute the advantages.

    ``beta`` is the step's KL weight. With ``kl_in_reward`` the penalty ``beta * KL`` is
    subtracted from each completion's reward before the advantages (for gae: from each
    token's reward) and the loss gets no KL term (the returned ``beta`` is then 0).
    """
    a = run.cfg.algorithm
    sampled, first, rounds = collect_rollout(run, state, step)
    metrics: dict[str, float] = {}
    if a.dynamic_sampling_rounds:
        metrics = {
            "dynamic_sampling/rounds": len(rounds),
            "dynamic_sampling/prompts_consumed": sum(len(r.row_ids) for r in rounds),
            "dynamic_sampling/groups_kept": len(sampled.row_ids) if sampled is not first else 0,
        }
    completions = sampled.completions
    G = a.group_size
    batch = build_batch(
        [run.train_prompt_ids[i] for i in sampled.row_ids for _ in range(G)],
        [c.token_ids for c in completions],
        torch.zeros(len(completions)),
        run.tokenizer.pad_token_id,
        # the engine's own log-probs (vLLM reports them): TIS weights and the logged
        # rollout/logprob_abs_diff between what the engine sampled from and the trainer's
        engine_logprobs=engine_logprobs(completions),
    )
    truncated = torch.tensor([c.finish_reason == "length" for c in completions])
    if a.mask_truncated:
        batch.completion_mask = mask_truncated(batch.completion_mask, truncated)

    rewards = sampled.scores.total
    token_kl = None  # gae with kl_in_reward: [B, T] KL per token, for the token rewards
    with run.timer("reference"):
        if run.reference is not None:
            with run.reference_pass():  # LoRA: the policy with its adapters off
                batch.ref_logprobs = batch_logprobs(run, run.reference, batch)
        if a.kl_in_reward:
            assert batch.ref_logprobs is not None  # config validation: kl_in_reward needs beta
            sampling_logp = batch_logprobs(run, run.model, batch)
            if a.advantage == "gae":
                kl = kl_penalty(a.kl_estimator, sampling_logp, batch.ref_logprobs)
                token_kl = torch.where(batch.completion_mask.bool(), kl, 0.0)
                penalty = beta * token_kl.sum(1)
            else:
                penalty = kl_reward_penalty(
                    sampling_logp, batch.ref_logprobs, batch.completion_mask, beta, a.kl_estimator
                )
                rewards = rewards - penalty
            metrics["kl_reward_penalty"] = float(penalty.mean())
    steps = None
    if a.advantage == "process":
        with run.timer("score"):
            steps = step_rewards_of(run, sampled)
    if run.critic is not None:
        with run.timer("values"):
            batch.old_values = batch_values(run, run.critic.model, batch)
    with run.timer("advantage"):
        if a.advantage == "gae":
            adv = gae_experience(run, rewards, batch, token_kl, beta)
        else:
            adv = advantages(run, sampled, rewards, batch, steps)
    batch.advantages = adv.advantages
    return Experience(
        batch=batch,
        sampled=sampled,
        first_round=first,
        truncated=truncated,
        advantage=adv,
        beta=0.0 if a.kl_in_reward else beta,
        generated_tokens=sum(len(c.token_ids) for r in rounds for c in r.completions),
        metrics=metrics,
    )


def engine_logprobs(completions: list[Completion]) -> list[list[float]] | None:
    """The sampling log-prob of every token, when the engine reported them for every
    completion (vLLM does; the transformers engine samples with the trainer's own weights and
    reports none)."""
    if not completions or any(c.logprobs is None for c in completions):
        return None
    return [list(c.logprobs or []) for c in completions]


def step_rewards_of(run: Run, sampled: Sampled) -> list[list[tuple[float | None, int]]]:
    """advantage = process: the step reward function's (reward, char_end) steps per completion."""
    assert run.step_reward is not None  # config validation: process needs a step reward
    G = run.cfg.algorithm.group_size
    prompts, texts, columns = reward_inputs(run, sampled.row_ids, sampled.completions)
    return score_steps(
        run.step_reward,
        prompts,
        texts,
        columns,
        row_ids=[i for i in sampled.row_ids for _ in range(G)],
    )


def advantages(
    run: Run,
    sampled: Sampled,
    rewards: torch.Tensor,
    batch: RolloutBatch,
    steps: list[list[tuple[float | None, int]]] | None = None,
) -> AdvantageOutput:
    """Outcome estimators from the rewards [B]; ``process`` from the step rewards, per token."""
    a, G = run.cfg.algorithm, run.cfg.algorithm.group_size
    if a.advantage != "process":
        kw: dict[str, Any] = {"eps": a.advantage_eps}
        if a.advantage == "grpo":
            kw["scale"] = a.scale_rewards
        return compute_advantages(a.advantage, rewards, G, **kw)
    assert steps is not None
    token_ids = [c.token_ids for c in sampled.completions]
    step_rewards, step_ends = steps_to_token_ends(steps, token_ids, run.tokenizer)
    return process_advantages(
        step_rewards, step_ends, G, batch.completion_width, eps=a.advantage_eps
    )


def gae_experience(
    run: Run, rewards: torch.Tensor, batch: RolloutBatch, token_kl: torch.Tensor | None, beta: float
) -> AdvantageOutput:
    """PPO's advantages from the critic's values (``batch.old_values``): token rewards (the
    sequence reward on the last token, minus beta * KL per token with kl_in_reward), GAE,
    then whitened over every rank's tokens. Sets ``batch.returns`` (the critic's targets).
    Completions that could not be scored (NaN reward) are left out of both losses."""
    a = run.cfg.algorithm
    assert batch.old_values is not None
    scored = ~torch.isnan(rewards)
    batch.completion_mask = batch.completion_mask * scored[:, None]
    mask = batch.completion_mask
    token_rewards = token_level_rewards(torch.where(scored, rewards, 0.0), mask, token_kl, beta)
    adv, batch.returns = gae_advantages(
        token_rewards, batch.old_values, mask, gamma=a.gamma, lam=a.gae_lambda
    )
    total, squares, count = all_reduce_floats(run.world, list(masked_sums(adv, mask)))
    informative = informative_groups(rewards, a.group_size)
    return AdvantageOutput(
        advantages=whiten(adv, mask, (total, squares, count)),
        # not used by GAE; logged as for every estimator (groups whose rewards all agree)
        frac_zero_std=float(1.0 - informative.to(torch.float64).mean()),
    )


def sample_records(run: Run, exp: Experience, k: int) -> list[dict[str, Any]]:
    """The first ``k`` completions of the batch as samples.jsonl rows."""
    G, pc = run.cfg.algorithm.group_size, run.cfg.data.prompt_column
    sampled, adv = exp.sampled, exp.advantage.advantages
    s = sampled.scores
    return [
        {
            "prompt": completion_text(run.train_rows[sampled.row_ids[i // G]][pc]),
            "completion": sampled.completions[i].text,
            "reward": _num(s.total[i]),
            **{f"reward/{n}": _num(v[i]) for n, v in s.per_function.items()},
            "advantage": float(adv[i].sum()) if adv.dim() == 2 else float(adv[i]),
            "finish_reason": sampled.completions[i].finish_reason,
        }
        for i in range(min(k, len(sampled.completions)))
    ]


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v
