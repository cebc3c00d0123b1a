"""The end of a run: summary.json, the final model (or LoRA adapter) and the curves; and
metrics.jsonl read back (a resumed run takes its first evaluation from there)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo.train.lora import save_adapter
from grpo.train.run_log import plot_curves

if TYPE_CHECKING:
    from grpo.train.setup import Run
    from grpo.train.state import TrainState


def logged_eval(run_dir: Path) -> dict[str, float]:
    """The evaluation before training, from metrics.jsonl (a resumed run does not redo it)."""
    for record in read_metrics(run_dir):
        if record.get("step") == 0 and "eval/accuracy" in record:
            return {k: v for k, v in record.items() if k.startswith("eval/")}
    return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def finish(
    run: Run,
    state: TrainState,
    before: dict[str, float],
    after: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """summary.json, the final model and the curves."""
    cfg = run.cfg
    tokens, train_seconds = state.tokens, state.train_seconds
    summary: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "steps": state.step,
        "wall_time_s": round(time.time() - started, 1),
        "train_time_s": round(train_seconds, 1),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / max(train_seconds, 1e-9), 1),
        "seed": cfg.train.seed,
        "world_size": run.world.world_size,
        "engine": type(run.engine).__name__,
        # which decoding the transformers engine used (rollout.static_decode resolved)
        "static_decode": bool(getattr(run.engine, "static_decode", False)),
    }
    if before and after:
        summary.update(
            {
                "accuracy_before": before["eval/accuracy"],
                "accuracy_after": after["eval/accuracy"],
                "accuracy_gain_points": round(
                    100 * (after["eval/accuracy"] - before["eval/accuracy"]), 1
                ),
                "eval_prompts": len(run.eval_rows),
            }
        )
    if cfg.train.save_final:
        final = run.run_dir / "final"
        weights = run.full_state_dict()  # a collective when sharded: every rank takes part
        if run.world.is_main:
            if run.lora is not None:  # the adapter; grpo eval and export --merge read it
                save_adapter(run.lora, final, weights)
            else:
                run.hf_model.save_pretrained(final, state_dict=weights)
            run.tokenizer.save_pretrained(final)
        summary["final_model"] = str(final)
    if not run.world.is_main:
        return summary
    if cfg.log.plot:
        plot_curves(read_metrics(run.run_dir), run.run_dir / "curves.png")
        summary["plot"] = str(run.run_dir / "curves.png")
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
