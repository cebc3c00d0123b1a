"""What a run writes: metrics.jsonl, samples.jsonl, the progress bar, curves.png, and the same
metrics to the experiment trackers of ``log.trackers`` (``train/trackers.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from grpo.train.trackers import Trackers


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Appends one JSON object per line; the progress bar shows the key numbers.

    Only the main process writes (``enabled``); on the other ranks every call is a no-op but
    ``history``, so the same code runs everywhere. ``trackers`` (the main process's) receive
    every metrics record too."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        *,
        progress_bar: bool,
        enabled: bool = True,
        trackers: Trackers | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.trackers = trackers if trackers is not None and enabled else Trackers([])
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._metrics = self.metrics_path.open("a", encoding="utf-8") if enabled else None
        self._samples = self.samples_path.open("a", encoding="utf-8") if enabled else None
        self.history: list[dict[str, Any]] = []
        self.bar = tqdm(
            total=total_steps,
            desc="grpo",
            unit="step",
            disable=not (progress_bar and enabled),
            dynamic_ncols=True,
        )

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
        shown = {
            "reward": values.get("reward/mean"),
            "acc": values.get("eval/accuracy"),
            "kl": values.get("kl"),
            "len": values.get("completion_len/mean"),
            "tok/s": values.get("tokens_per_s"),
        }
        self.bar.set_postfix(
            {k: f"{v:.3g}" for k, v in shown.items() if isinstance(v, float | int)}, refresh=False
        )
        self.bar.update(1)

    def resumed(self, step: int) -> None:
        """The progress bar starts at the resumed step."""
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
