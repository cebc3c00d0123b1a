"""Loading the policy, the frozen reference and the tokenizer; choosing the precision."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

BUILTIN_PREFIX = "builtin:"


def resolve_model_path(name_or_path: str) -> str:
    """``builtin:NAME`` names a model shipped in ``grpo/assets``; others go to transformers."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX) :]
    assets = Path(str(resources.files("grpo") / "assets"))
    path = assets / name
    if not (path / "config.json").is_file():
        # the listing must not fail itself when no model is shipped at all
        shipped = sorted(p.name for p in assets.iterdir() if p.is_dir()) if assets.is_dir() else []
        raise FileNotFoundError(
            f"model.name_or_path: no built-in model {name!r}; "
            f"shipped: {', '.join(shipped) or 'none'}"
        )
    return str(path)


def bf16_supported(device: torch.device) -> bool:
    """bf16 compute pays off on CUDA with bf16 support and on CPUs with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``model.dtype``; None means plain fp32 compute."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_supported(device) else None


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding is masked out everywhere; EOS is the usual stand-in (as in TRL and verl).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    path: str, device: torch.device, *, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The trained model, with fp32 master weights (compute runs under bf16 autocast)."""
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model.to(device)


def frozen_reference(policy: PreTrainedModel, dtype: torch.dtype | None) -> PreTrainedModel:
    """A frozen copy of the policy's starting weights, in the compute dtype (no grads, no Adam)."""
    ref = copy.deepcopy(policy)
    if dtype is not None:
        ref = ref.to(dtype)
    ref.eval()
    ref.requires_grad_(False)
    return ref
