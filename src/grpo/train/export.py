"""``grpo export``: a Hugging Face model from a checkpoint of any world size."""

from __future__ import annotations

from pathlib import Path

import torch

from grpo.config import ConfigError
from grpo.train.checkpoint import CheckpointManager, checkpoint_problem
from grpo.train.distributed import SINGLE
from grpo.train.logprob_pass import PolicyLogprobs


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory's latest complete checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"grpo export: {path} is not a directory")
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path, SINGLE, keep_last=1).latest()
        if latest is None:
            raise ConfigError(f"grpo export: the run directory {path} has no complete checkpoint")
        return latest
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(f"grpo export: {path} is not a complete checkpoint: {problem}")
    return path


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Load the policy weights of ``checkpoint`` (DCP shards of any number of ranks) into the
    model its ``model/config.json`` describes and ``save_pretrained`` it with the tokenizer.
    Returns the checkpoint used."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_checkpoint(checkpoint)
    config = AutoConfig.from_pretrained(path / "model")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    wrapper = PolicyLogprobs(model)  # the checkpoint's names are the trainer's (lm.*)
    state = {"model": wrapper.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    wrapper.load_state_dict(state["model"])
    out = Path(out)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path / "model").save_pretrained(out)
    return path
