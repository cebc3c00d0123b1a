"""The GRPO training loop.

One step reads like the algorithm (DeepSeekMath, arXiv 2402.03300, Algorithm 1):

    make experience (sample G completions per prompt -> rewards -> reference log-probs when
    beta > 0 -> group advantages) -> mu policy updates over micro-batches -> weights to the
    engine -> metrics -> periodic evaluation

PPO with a critic (``algorithm.advantage=gae``) is the same step with the critic's values
before the advantages (GAE) and the critic's own update after the policy's.

Each stage is one call into ``train/experience.py``, ``train/update.py`` or the engine; every
formula lives in ``grpo.core``.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from grpo import interrupt
from grpo.config import GRPOConfig
from grpo.core import beta_at
from grpo.train.checkpoint import step_name
from grpo.train.distributed import (
    World,
    any_rank,
    broadcast_object,
    init_world,
    report_failure,
    shutdown,
)
from grpo.train.evaluate_run import evaluate, log_samples
from grpo.train.experience import make_experience
from grpo.train.finish import finish, logged_eval
from grpo.train.setup import Run, setup
from grpo.train.state import PromptSampler, TrainState
from grpo.train.step_metrics import step_metrics
from grpo.train.update import micro_plan, update_critic, update_policy


def step_beta(cfg: GRPOConfig, step: int, total_steps: int) -> float:
    """The KL weight of ``step`` (1-based); the schedule is a function of completed steps."""
    a = cfg.algorithm
    return beta_at(
        step - 1,
        total_steps,
        schedule=a.beta_schedule,
        beta=a.beta,
        beta_start=a.beta_start,
        beta_end=a.beta_end,
    )


def rl_step(run: Run, state: TrainState) -> dict[str, float]:
    """One GRPO step (``state.step + 1``); returns the step's metrics."""
    step = state.step + 1
    run.timer.reset()
    beta = step_beta(run.cfg, step, run.total_steps)

    exp = make_experience(run, state, step, beta)
    micro = [exp.batch.rows(idx) for idx in micro_plan(run, exp.batch)]
    update: dict[str, float] = {}
    if policy_learns(run, step):
        with run.timer("update"):
            update = update_policy(run, micro, exp.batch, exp.beta)
    if run.critic is not None:
        with run.timer("critic_update"):
            update |= update_critic(run, micro, exp.batch, abortable=not update)
    with run.timer("sync"):
        run.sync_engine()

    metrics = step_metrics(
        run.world,
        exp,
        update,
        run.timer.metrics(),
        run.timer.elapsed(),
        lr=run.scheduler.get_last_lr()[0],
        beta=beta,
    )
    log_samples(run, exp, step)
    state.step = step
    return metrics


def policy_learns(run: Run, step: int) -> bool:
    """False during the critic's warm-up (``critic.warmup_steps``): only the critic learns."""
    return run.critic is None or step > run.critic.warmup_steps


class Stopped(Exception):
    """The run stopped on SIGTERM or SIGINT after writing a checkpoint (``checkpoint``)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "nothing to save yet"
        super().__init__(f"stopped by {name} after step {step}: {where}")
        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, checkpoint, run_dir


def train(cfg: GRPOConfig, world: World | None = None) -> dict[str, Any]:
    """Run GRPO as configured; returns the summary also written to ``summary.json``.

    Raises ``Stopped`` when SIGTERM or Ctrl-C ended the run early (a checkpoint was written).
    """
    started = time.time()
    world = world or init_world()
    if cfg.train.deterministic:
        make_deterministic()
    try:
        run = setup(cfg, world)
        try:
            summary = _train(run, started)
        finally:
            run.close()
    except Stopped:
        shutdown(world, clean=False)
        raise
    except BaseException as e:
        report_failure(world, e)  # the other ranks stop now instead of waiting for this one
        shutdown(world, clean=False)
        raise
    shutdown(world)
    return summary


def make_deterministic() -> None:
    """Bit-identical reruns on CPU (docs/checkpoints.md): deterministic kernels only."""
    torch.use_deterministic_algorithms(True)


def _train(run: Run, started: float) -> dict[str, Any]:
    cfg, log, world = run.cfg, run.log, run.world
    log.write(f"run directory: {run.run_dir}")
    state = TrainState(PromptSampler(len(run.train_rows), cfg.train.seed, cfg.data.shuffle))
    if run.resume_from is not None:
        state.load_state_dict(run.checkpoints.load(run.resume_from, run))
        run.sync_engine()
        before = broadcast_object(world, logged_eval(run.run_dir) if world.is_main else None)
        log.resumed(state.step)
        log.write(f"resumed from {run.resume_from} (step {state.step} of {run.total_steps})")
    else:
        before = evaluate(run)
        if before:
            log.metrics(0, before)
            log.write(f"held-out accuracy before training: {100 * before['eval/accuracy']:.1f}%")
    limit_s = cfg.train.time_limit_minutes * 60 or math.inf
    save_every, saved_at = cfg.train.save_every, None
    # one process aborts a step still running 5 s after the signal; ranks always finish it
    with interrupt.handling_stops(None if world.distributed else STEP_ABORT_AFTER_S):
        while state.step < run.total_steps:
            at_start = _trainer_state(run, state)
            try:
                metrics = rl_step(run, state)
            except interrupt.StepAborted:
                run.optimizer.zero_grad(set_to_none=True)
                if run.critic is not None:
                    run.critic.optimizer.zero_grad(set_to_none=True)
                raise _stop(run, at_start, saved_at) from None
            state.tokens += int(metrics["tokens"])
            state.train_seconds += metrics["time/step"]
            out_of_time = time.time() - started > limit_s
            last = state.step == run.total_steps or out_of_time
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and not last:
                metrics.update(evaluate(run))
            metrics["time/elapsed"] = time.time() - started  # wall clock at the end of the step
            log.metrics(state.step, metrics)
            log.progress(metrics)
            stop = any_rank(world, interrupt.requested() is not None)
            if save_every and state.step % save_every == 0:
                run.checkpoints.save(run, _trainer_state(run, state))
                saved_at = state.step
            if stop:
                raise _stop(run, _trainer_state(run, state), saved_at)
            if out_of_time and state.step < run.total_steps:
                minutes = cfg.train.time_limit_minutes
                log.write(f"time limit of {minutes} min reached at step {state.step}")
                break
    after = evaluate(run)
    if after:
        log.metrics(state.step, after)
    log.close()
    return finish(run, state, before, after, started)


def _trainer_state(run: Run, state: TrainState) -> dict[str, Any]:
    """What a checkpoint of this moment saves: the loop's state and the trackers' run ids."""
    state.trackers = run.log.trackers.state_dict()
    return state.state_dict()


# How long after SIGTERM/SIGINT a single-process step may still run before it is aborted.
STEP_ABORT_AFTER_S = 5.0


def _stop(run: Run, trainer_state: dict[str, Any], saved_at: int | None) -> Stopped:
    """Write the checkpoint of ``trainer_state`` (unless that step is saved already) and say
    where it is."""
    signum = interrupt.requested() or signal.SIGTERM
    step = int(trainer_state["step"])
    path = None  # (nothing to save before the first step)
    if step > 0:
        # even with train.save_every = 0: a stopped run must be resumable
        if saved_at == step:
            path = run.checkpoints.root / step_name(step)
        else:
            path = run.checkpoints.save(run, trainer_state)
    run.log.close()
    return Stopped(signum, step, path, run.run_dir)
