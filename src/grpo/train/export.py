"""``grpo export``: a Hugging Face model from a checkpoint of any world size."""

from __future__ import annotations

from pathlib import Path

import torch

from grpo.config import ConfigError
from grpo.train.checkpoint import CheckpointManager, checkpoint_problem, trainable_entries
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


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, merge: bool = False) -> Path:
    """Load the policy weights of ``checkpoint`` (DCP shards of any number of ranks) into the
    model its ``model/config.json`` describes and ``save_pretrained`` it with the tokenizer.

    A LoRA run's checkpoint holds the adapters only: it is written as a peft adapter
    directory, or with ``merge`` as the base model with the adapters merged in. A LoRA adapter
    directory (a LoRA run's ``final/``) as ``checkpoint`` needs ``merge``. Returns the
    checkpoint (or adapter directory) used."""
    from grpo.train import lora as lora_lib

    source = Path(checkpoint)
    if lora_lib.is_adapter_dir(source):
        if not merge:
            raise ConfigError(
                f"grpo export: {source} is a LoRA adapter already; add --merge to write the "
                "merged model"
            )
        _save(lora_lib.load_merged(source, torch.device("cpu")), source, out)
        return source
    path = resolve_checkpoint(checkpoint)
    if (path / "model" / lora_lib.ADAPTER_CONFIG).is_file():
        return _export_lora(path, out, merge=merge)
    if merge:
        raise ConfigError(
            f"grpo export: {path} is a checkpoint of full fine-tuning (no adapters to merge); "
            "drop --merge"
        )
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path / "model")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    wrapper = PolicyLogprobs(model)  # the checkpoint's names are the trainer's (lm.*)
    state = {"model": wrapper.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    wrapper.load_state_dict(state["model"])
    _save(model, path, out)
    return path


def _export_lora(path: Path, out: str | Path, *, merge: bool) -> Path:
    """The adapters of a LoRA checkpoint on their base model (re-read, as on resume)."""
    import torch.distributed.checkpoint as dcp
    from peft import LoraConfig, get_peft_model

    from grpo.train import lora as lora_lib
    from grpo.train.models import load_policy, resolve_model_path

    lora_lib.require_peft(f"grpo export {path}")
    base = lora_lib.adapter_base(path / "model")
    model = load_policy(resolve_model_path(base), torch.device("cpu"))
    wrapped = get_peft_model(model, LoraConfig.from_pretrained(str(path / "model")))
    wrapper = PolicyLogprobs(model)
    # the checkpoint holds the trainable tensors only (the adapters)
    state = {"model": trainable_entries(wrapper, wrapper.state_dict())}
    dcp.load(state, checkpoint_id=str(path))
    wrapper.load_state_dict(state["model"], strict=False)
    if merge:
        _save(wrapped.merge_and_unload(), path, out)
    else:
        lora_lib.save_adapter(wrapped, Path(out))
        _tokenizer(path).save_pretrained(out)
    return path


def _tokenizer(source: Path):
    from transformers import AutoTokenizer

    where = source / "model" if (source / "model").is_dir() else source
    return AutoTokenizer.from_pretrained(where)


def _save(model: torch.nn.Module, source: Path, out: str | Path) -> None:
    out = Path(out)
    model.save_pretrained(out)
    _tokenizer(source).save_pretrained(out)
