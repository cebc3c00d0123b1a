"""What a run must remember between steps to continue exactly: the step, the prompt sampler's
position and the random generators. Everything here round-trips through ``state_dict()`` /
``load_state_dict()`` (plain Python values and tensors), which the checkpoints save."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def pass_order(num_rows: int, seed: int, pass_index: int, shuffle: bool) -> list[int]:
    """The order of the rows in pass ``pass_index`` over the prompts: a function of its
    arguments alone, so a position in the stream of prompts is enough to restore it."""
    order = list(range(num_rows))
    if shuffle:
        # pass 0 draws from Random(seed) as the trainer always did; later passes get their own
        # stream so that pass k does not depend on how many draws passes < k made
        rng = random.Random(seed if pass_index == 0 else f"{seed}:pass:{pass_index}")
        rng.shuffle(order)
    return order


@dataclass
class PromptSampler:
    """An endless stream of row indices: every row once per pass, reshuffled every pass.

    The stream is the concatenation of the passes; a batch that reaches the end of a pass takes
    the rest from the start of the next one. The whole position is one number, ``consumed``
    (rows handed out so far), so the sampler resumes mid-pass and at pass boundaries alike.
    """

    num_rows: int
    seed: int
    shuffle: bool = True
    consumed: int = 0
    _cache: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ValueError("the prompt sampler needs at least one row")

    @property
    def pass_index(self) -> int:
        """The pass the next row comes from (0-based)."""
        return self.consumed // self.num_rows

    @property
    def offset(self) -> int:
        """Rows of the current pass already handed out."""
        return self.consumed % self.num_rows

    def _order(self, pass_index: int) -> list[int]:
        if pass_index not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[pass_index] = pass_order(self.num_rows, self.seed, pass_index, self.shuffle)
        return self._cache[pass_index]

    def take(self, count: int) -> list[int]:
        """The next ``count`` row indices."""
        if count > self.num_rows:
            raise ValueError(
                f"a step needs {count} prompts but the training set has only {self.num_rows}"
            )
        rows = []
        for position in range(self.consumed, self.consumed + count):
            rows.append(self._order(position // self.num_rows)[position % self.num_rows])
        self.consumed += count
        return rows

    def state_dict(self) -> dict[str, Any]:
        order = self._order(self.pass_index)
        return {
            "consumed": self.consumed,
            "pass": self.pass_index,
            "offset": self.offset,
            "num_rows": self.num_rows,
            # detects a resume against a different dataset or seed, which would silently
            # change which prompts the remaining steps see
            "order_sha1": hashlib.sha1(str(order).encode()).hexdigest(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(
                f"the checkpoint's prompt sampler covered {state['num_rows']} training rows, "
                f"this run has {self.num_rows}: resume with the same data"
            )
        self.consumed = int(state["consumed"])
        order = self._order(self.pass_index)
        if hashlib.sha1(str(order).encode()).hexdigest() != state["order_sha1"]:
            raise ValueError(
                "the checkpoint's prompt order differs from this run's (another train.seed or "
                "data.shuffle?): resume with the same settings"
            )


def rng_state() -> dict[str, Any]:
    """This process's random generators (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """The loop's position: ``step`` steps are done; the next prompts come from ``sampler``.

    ``tokens`` and ``train_seconds`` add up over every run of a resumed job; ``trackers``
    holds experiment trackers' run ids, so a resumed run continues the same tracker run.
    There is no dynamic-sampling carry-over to keep: the rounds of a step finish within the
    step and surplus informative groups are dropped (as in DAPO and verl), since they were
    sampled by a policy the next step no longer has.
    """

    sampler: PromptSampler
    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    trackers: dict[str, str] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "trackers": dict(self.trackers),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; ``rng`` may be missing (a rank the checkpoint did not have)."""
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.tokens = int(state.get("tokens", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.trackers = dict(state.get("trackers", {}))
        if "rng" in state:
            set_rng_state(state["rng"])
