"""A real 6-step training run with ``log.trackers=[tensorboard,wandb]`` (W&B offline): the
TensorBoard events hold reward/mean at steps 1..6 and W&B writes its offline run directory.

`make test` installs both extras and sets GRPO_REQUIRE_TRACKERS=1, so CI runs this; elsewhere
it skips, saying which package is missing.
"""

from __future__ import annotations

import json
import os

import pytest

from grpo.config import load_config
from grpo.train.loop import train

pytestmark = pytest.mark.slow

for _module in ("tensorboard", "wandb"):
    if os.environ.get("GRPO_REQUIRE_TRACKERS") == "1":
        __import__(_module)
    else:
        pytest.importorskip(_module, reason=f"{_module} is not installed (pip install grpo[...])")


def test_six_steps_reach_tensorboard_and_wandb(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            "train.steps=6",
            "train.batch_size=16",
            "data.num_eval_prompts=8",
            "train.eval_every=3",
            "log.progress_bar=false",
            "log.plot=false",
            "train.save_final=false",
            "rollout.engine=transformers",
            "rollout.static_decode=false",  # the eager engine: no compile time per test
            "log.trackers=[tensorboard,wandb]",
            "log.wandb_project=grpo-tests",
            f"train.output_dir={run}",
        ],
    )
    train(cfg)

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    reward = acc.Scalars("reward/mean")
    assert [e.step for e in reward] == [1, 2, 3, 4, 5, 6]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    want = [r["reward/mean"] for r in lines if "reward/mean" in r]
    assert [e.value for e in reward] == pytest.approx(want, abs=1e-6)  # float32 events
    # every scalar of metrics.jsonl is there at its step, evaluations included (0, 3, 6)
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 3, 6]
    for tag in ("loss", "entropy", "time/step", "tokens_per_s", "lr"):
        assert len(acc.Scalars(tag)) == 6, tag

    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = offline[0].name.rsplit("-", 1)[1]
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0
