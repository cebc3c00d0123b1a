"""TensorBoard and W&B trackers for real: events read back with TensorBoard's own reader, W&B in
offline mode writing its run directory, and resumption continuing the same runs.

`make test` installs both extras, so CI runs these; elsewhere they skip (saying why) when a
package is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grpo.train.trackers import Trackers, check_trackers_available, make_trackers, scalars

REQUIRE = os.environ.get("GRPO_REQUIRE_TRACKERS") == "1" or os.environ.get("CI") == "true"


def _need(module: str) -> None:
    if REQUIRE:
        __import__(module)
    else:
        pytest.importorskip(module, reason=f"{module} is not installed (pip install grpo[...])")


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event under log_dir, read with TensorBoard's EventAccumulator (which applies
    purge events as TensorBoard's UI does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_keeps_finite_numbers_only() -> None:
    rec = {"step": 3, "a": 1, "b": 0.5, "c": None, "d": float("nan"), "e": "x", "f": True}
    assert scalars(rec) == {"a": 1.0, "b": 0.5}


def test_unknown_or_duplicate_tracker_names() -> None:
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'; valid names: tensorboard"):
        check_trackers_available(["mlflow"])
    with pytest.raises(ValueError, match="listed twice"):
        check_trackers_available(["wandb", "wandb"])
    empty = make_trackers([], Path("/nonexistent"))
    empty.log(1, {"x": 1.0})  # no tracker: nothing happens, nothing is written
    assert empty.state_dict() == {}


def test_tensorboard_logs_each_step_and_resumes_in_place(tmp_path: Path) -> None:
    _need("tensorboard")
    t = make_trackers(["tensorboard"], tmp_path)
    for step in range(1, 5):
        t.log(step, {"reward/mean": step / 10, "kl": None, "step": step})
    state = t.state_dict()
    t.close()
    assert state == {"tensorboard": {"log_dir": str(tmp_path / "tensorboard")}}
    got = tb_scalars(tmp_path / "tensorboard")
    assert list(got) == ["reward/mean"]  # None is not a scalar; "step" is the x axis
    assert [s for s, _ in got["reward/mean"]] == [1, 2, 3, 4]
    # TensorBoard stores float32
    assert [v for _, v in got["reward/mean"]] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=1e-7)

    # the checkpoint holds step 2; steps 3-4 of the interrupted run are superseded
    again = make_trackers(["tensorboard"], tmp_path / "elsewhere", resume=state, resume_step=2)
    for step in (3, 4, 5):
        again.log(step, {"reward/mean": 1.0 + step})
    again.close()
    got = tb_scalars(tmp_path / "tensorboard")["reward/mean"]
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    assert [v for s, v in got if s >= 3] == [4.0, 5.0, 6.0]
    assert not (tmp_path / "elsewhere").exists()


def test_wandb_offline_run_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "grpo-tests")
    t = make_trackers(["wandb"], tmp_path, config={"algorithm": {"policy_loss": "gspo"}})
    run_id = t.state_dict()["wandb"]["run_id"]
    for step in range(1, 4):
        t.log(step, {"reward/mean": step / 10})
    t.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0

    again = make_trackers(["wandb"], tmp_path, resume={"wandb": {"run_id": run_id}})
    assert again.state_dict() == {"wandb": {"run_id": run_id}}
    again.log(4, {"reward/mean": 0.4})
    again.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)  # the same run id


def test_trackers_fan_out(tmp_path: Path) -> None:
    class Recorder:
        name = "rec"

        def __init__(self) -> None:
            self.seen: list[tuple[int, dict[str, float]]] = []

        def log(self, step: int, values: dict[str, float]) -> None:
            self.seen.append((step, values))

        def state_dict(self) -> dict:
            return {"n": len(self.seen)}

        def close(self) -> None:
            self.seen.append((-1, {}))

    a = Recorder()
    t = Trackers([a])
    t.log(2, {"x": 1, "y": None})
    t.log(3, {"y": None})  # nothing numeric: nothing logged
    assert t.state_dict() == {"rec": {"n": 1}}
    t.close()
    assert a.seen == [(2, {"x": 1.0}), (-1, {})]
