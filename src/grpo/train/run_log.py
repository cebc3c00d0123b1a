"""What a run writes: metrics.jsonl, samples.jsonl, the console's progress, curves.png, and
the same metrics to the experiment trackers of ``log.trackers`` (``train/trackers.py``).

The console shows one progress bar on a terminal; when the output is not a terminal (a log
file, a pipe, CI) or ``log.progress_bar`` is false, a one-line summary every ``log_every``
steps instead, so a log holds lines rather than carriage-return redraws.
"""

from __future__ import annotations

import json
import math
import sys
import weakref
from pathlib import Path
from typing import Any

from tqdm import tqdm

from grpo.train.trackers import Trackers

# The key numbers of a step, as (metric, label, format) for the bar and the summary lines.
_SHOWN = (
    ("reward/mean", "reward", ".3g"),
    ("eval/accuracy", "acc", ".3g"),
    ("kl", "kl", ".3g"),
    ("completion_len/mean", "len", ".3g"),
    ("tokens_per_s", "tok/s", ".3g"),
)
_open_logs: weakref.WeakSet[RunLog] = weakref.WeakSet()


def close_open_bars() -> None:
    """End every progress bar still drawn (a run stopped by an error), so that what is printed
    next starts on a line of its own."""
    for log in list(_open_logs):
        if log.bar is not None:
            log.bar.close()


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Appends one JSON object per line; the progress bar (or a summary line every
    ``log_every`` steps) shows the key numbers.

    Only the main process writes (``enabled``); on the other ranks every call is a no-op but
    ``history``, so the same code runs everywhere. ``trackers`` (the main process's) receive
    every metrics record too."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        *,
        progress_bar: bool,
        log_every: int = 10,
        initial_step: int = 0,
        enabled: bool = True,
        trackers: Trackers | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.trackers = trackers if trackers is not None and enabled else Trackers([])
        self.total_steps = total_steps
        self.log_every = max(1, log_every)
        self.step = initial_step
        # a bar only where it can redraw itself in place
        self.draw_bar = progress_bar and enabled and sys.stderr.isatty()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._metrics = self.metrics_path.open("a", encoding="utf-8") if enabled else None
        self._samples = self.samples_path.open("a", encoding="utf-8") if enabled else None
        self.history: list[dict[str, Any]] = []
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="grpo",
            unit="step",
            disable=not self.draw_bar,
            dynamic_ncols=True,
        )
        _open_logs.add(self)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self.history.append(record)
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        self.trackers.log(step, record)  # every scalar of the line, at its step

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self._samples is None:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, default=str) + "\n")
        self._samples.flush()

    def progress(self, values: dict[str, Any]) -> None:
        """One step done: redraw the bar, or print a summary line every ``log_every`` steps
        (and at the last step)."""
        self.step += 1
        shown = {
            label: format(v, fmt)
            for key, label, fmt in _SHOWN
            if isinstance(v := values.get(key), float | int) and math.isfinite(v)
        }
        if self.draw_bar:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif self.step % self.log_every == 0 or self.step == self.total_steps:
            seconds = values.get("time/step")
            timing = f"  {seconds:.2f} s/step" if isinstance(seconds, float | int) else ""
            numbers = "  ".join(f"{k} {v}" for k, v in shown.items())
            self.write(f"step {self.step}/{self.total_steps}  {numbers}{timing}")

    def resumed(self, step: int) -> None:
        """The progress bar (and the summary lines' count) start at the resumed step."""
        self.step = step
        self.bar.update(step)

    def write(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.bar is None:
            return
        self.trackers.close()
        self.bar.close()
        self.bar = None
        _open_logs.discard(self)
        for f in (self._metrics, self._samples):
            if f is not None:
                f.close()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Reward (total and per function) and held-out accuracy against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    train = [h for h in history if h.get("reward/mean") is not None]
    steps = [h["step"] for h in train]
    ax_r.plot(steps, [h["reward/mean"] for h in train], label="total", linewidth=2)
    fn_keys = sorted(
        {k for h in train for k in h if k.startswith("rewards/") and k.endswith("/mean")}
    )
    for key in fn_keys:
        pts = [(h["step"], h[key]) for h in train if h.get(key) is not None]
        ax_r.plot([p[0] for p in pts], [p[1] for p in pts], label=key.split("/")[1], alpha=0.7)
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("mean reward of the rollout batch")
    ax_r.set_title("Training reward")
    ax_r.legend()
    ax_r.grid(alpha=0.3)
    evals = [h for h in history if h.get("eval/accuracy") is not None]
    ax_a.plot([h["step"] for h in evals], [100 * h["eval/accuracy"] for h in evals], marker="o")
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("held-out greedy accuracy (%)")
    ax_a.set_title("Evaluation")
    ax_a.set_ylim(0, 100)
    ax_a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
