"""Checkpoints: save, find the latest complete one, load; atomic, sharded, any world size.

Layout of ``<output_dir>/checkpoints/step-00000042/``::

    .metadata, __*_*.distcp  torch.distributed.checkpoint (DCP) of {"model", "optim"}: the
                             policy and AdamW state, sharded as the ranks hold them; DCP
                             reshards on load, so a checkpoint of N ranks loads on M.
                             With advantage=gae also {"critic", "critic_optim"}: the value
                             model and its AdamW state, saved and resharded the same way
    trainer.pt               step, prompt sampler position, LR schedule, token and time counts
    rank<r>.pt               rank r's random generators (python, numpy, torch)
    config.yaml              the run's configuration
    model/                   the policy's config.json and the tokenizer (for ``grpo export``)
    manifest.json            written last: step, world size, every file with its size

A checkpoint is written under a temporary name (``.tmp-step-...``) and renamed into place
only after every file and the manifest are fsynced, so a directory named ``step-*`` is whole.
A checkpoint is never written over in place (DCP would leave the old ``.metadata`` beside torn
shards). A loader that meets an incomplete one (files missing or cut short) warns and takes the
previous one. The reference model is not saved: it is always the initial weights, re-read from
``model.name_or_path``. With LoRA only the trainable adapters are saved, for the same reason:
the frozen base is re-read from there (and ``model/`` also holds the adapter's config).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from grpo.train.distributed import World, barrier, broadcast_object

logger = logging.getLogger("grpo.checkpoint")

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and every directory, so a rename publishes data that is
    on disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(dirpath) / name)
        _fsync_file(Path(dirpath))


def _files_with_sizes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if name != MANIFEST:
                out[str(p.relative_to(root))] = p.stat().st_size
    return dict(sorted(out.items()))


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint directory ``path`` cannot be loaded, or None when it is complete."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the save did not finish)"
    try:
        info = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest.json ({e})"
    for name, size in info.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
    if not (path / ".metadata").is_file():
        return "no DCP .metadata"
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def _trained_state(run: Any) -> dict[str, Any]:
    """The DCP state of everything trained: the policy and its AdamW state, and with a critic
    (advantage=gae) the critic and its AdamW state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(run.model, run.optimizer)
    if getattr(run, "lora", None) is not None:  # the frozen base is re-read, not saved
        model_sd = trainable_entries(run.model, model_sd)
    state = {"model": model_sd, "optim": optim_sd}
    critic = getattr(run, "critic", None)
    if critic is not None:
        state["critic"], state["critic_optim"] = get_state_dict(critic.model, critic.optimizer)
    return state


class CheckpointManager:
    """Writes and finds the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, world: World, keep_last: int) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.world = world
        self.keep_last = keep_last

    # ---- finding -----------------------------------------------------------------------------

    def candidates(self) -> list[Path]:
        """Checkpoint directories, newest step first (complete or not)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-")]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; incomplete ones are skipped with a warning."""
        for path in self.candidates():
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            logger.warning("skipping the incomplete checkpoint %s: %s", path, problem)
        return None

    # ---- saving ------------------------------------------------------------------------------

    def save(self, run: Any, trainer_state: dict[str, Any]) -> Path:
        """Write a checkpoint of step ``trainer_state['step']``; every rank calls this."""
        import torch.distributed.checkpoint as dcp

        world, step = self.world, int(trainer_state["step"])
        final = self.root / step_name(step)
        tmp = None
        if world.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            tmp = self.root / f".tmp-{step_name(step)}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
        tmp = Path(broadcast_object(world, str(tmp) if tmp else None))

        with _single_process_quiet():
            dcp.save(_trained_state(run), checkpoint_id=str(tmp))
        torch.save(trainer_state["rng"], tmp / f"rank{world.rank}.pt")
        barrier(world)
        if world.is_main:
            shared = {k: v for k, v in trainer_state.items() if k != "rng"}
            torch.save(
                {"state": shared, "scheduler": run.scheduler.state_dict()}, tmp / "trainer.pt"
            )
            from grpo.config import to_yaml

            (tmp / "config.yaml").write_text(to_yaml(run.cfg), encoding="utf-8")
            run.hf_model.config.save_pretrained(tmp / "model")
            run.tokenizer.save_pretrained(tmp / "model")
            if getattr(run, "lora", None) is not None:
                run.lora.peft_config["default"].save_pretrained(tmp / "model")
            _fsync_tree(tmp)
            manifest = {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": world.world_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "files": _files_with_sizes(tmp),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            _fsync_file(tmp / MANIFEST)
            _fsync_file(tmp)
            if final.exists():  # the same step saved again (after a resume): keep it whole
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_file(self.root)
            self._prune()
        barrier(world)
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; delete older ones and any
        incomplete one older than the newest complete."""
        complete = [p for p in self.candidates() if checkpoint_problem(p) is None]
        keep = set(complete[: self.keep_last])
        newest = complete[0].name if complete else ""
        for p in self.candidates():
            if p not in keep and p.name <= newest:
                shutil.rmtree(p, ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        """Temporary directories of saves that never finished (killed mid-save)."""
        for p in self.root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)

    # ---- loading -----------------------------------------------------------------------------

    def load(self, path: Path, run: Any) -> dict[str, Any]:
        """Load the policy, the optimizer and the LR schedule of checkpoint ``path`` into
        ``run`` (at this run's world size), and return its trainer state (with this rank's
        RNG state under ``rng`` when the checkpoint has one for this rank)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(f"train.resume: the checkpoint {path} is incomplete: {problem}")
        state = _trained_state(run)
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(
            run.model,
            run.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            # with LoRA the frozen base is absent from the checkpoint by design
            options=StateDictOptions(strict=getattr(run, "lora", None) is None),
        )
        critic = getattr(run, "critic", None)
        if critic is not None:
            set_state_dict(
                critic.model,
                critic.optimizer,
                model_state_dict=state["critic"],
                optim_state_dict=state["critic_optim"],
            )
        trainer = torch.load(path / "trainer.pt", weights_only=False)
        run.scheduler.load_state_dict(trainer["scheduler"])
        out = dict(trainer["state"])
        rank_file = path / f"rank{self.world.rank}.pt"
        if rank_file.is_file():
            out["rng"] = torch.load(rank_file, weights_only=False)
        return out


def trainable_entries(module: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` (``module``'s state dict) that are trainable parameters: with
    LoRA, the adapters. Parameters are listed with their tied aliases, so a frozen tied
    weight is left out under every name (DCP's ``ignore_frozen_params`` drops the embedding
    but keeps its alias, the head)."""
    trainable = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable}


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load of one process without a process group that it
    "assumes the intent is to save in a single process", which is exactly the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*assuming the intent is to .* single process")
        yield
