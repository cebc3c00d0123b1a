"""LoRA (Hu et al. 2021, arXiv 2106.09685) with peft: adapters on the policy, the reference as
the same model with its adapters switched off, merged weights for the engines.

A LoRA layer computes ``W x + (alpha / r) * B A x`` with the base ``W`` frozen and only ``A``
[r, in] and ``B`` [out, r] trained (``B`` starts at zero, so step 0 is the base model). Hence:

- the reference model (the starting weights) is the policy with its adapters disabled: no
  second copy of the weights in memory;
- an engine that holds its own copy (vLLM, or the inference copy on several ranks) receives the
  merged weights ``W + (alpha / r) * B @ A`` under the plain checkpoint names, so it needs to
  know nothing about LoRA;
- a checkpoint saves the adapters and their optimizer state only; the frozen base is re-read
  from ``model.name_or_path`` on resume, as the reference always was;
- ``final/`` is a peft adapter directory (``adapter_config.json``, ``adapter_model.safetensors``)
  plus the tokenizer; :func:`load_merged` turns it back into one model (``grpo eval``,
  ``grpo export --merge``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grpo.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
# peft names the one adapter we train "default"; its tensors are ``<module>.lora_A.default.weight``
_ADAPTER = "default"
# What ``grpo`` records in adapter_config.json beside peft's keys: the base model as the user
# named it (``builtin:...`` resolves on any install, an absolute path only on this machine).
_BASE_KEY = "base_model_name_or_path"


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def require_peft(key: str = "model.lora_rank") -> None:
    if not peft_available():
        raise ModelError(
            f"{key}: LoRA needs the peft package, which is not installed",
            hint="pip install 'grpo[lora]' (or pip install peft), or set model.lora_rank=0",
        )


def add_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    base_name: str,
) -> Any:
    """Inject LoRA adapters into ``model`` in place and freeze everything else.

    Returns the peft wrapper (kept for switching the adapters off and for saving them); the
    transformers model itself keeps being the module that is trained. ``target_modules``
    empty means every linear layer except the output head (peft's ``all-linear``).
    """
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) or "all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ModelError(
            f"model.lora_target_modules: {e}",
            hint="name modules of the model (e.g. q_proj v_proj), or leave the list empty for "
            "every linear layer",
        ) from e
    wrapped.peft_config[_ADAPTER].base_model_name_or_path = base_name
    return wrapped


def lora_scaling(alpha: float, rank: int) -> float:
    """The factor of ``B @ A`` in the layer's output (the paper's alpha / r)."""
    return alpha / rank


@contextlib.contextmanager
def adapters_disabled(wrapped: Any) -> Iterator[None]:
    """The base model: the adapters contribute nothing inside this block."""
    with wrapped.disable_adapter():
        yield


def merged_weights(
    weights: Iterable[tuple[str, torch.Tensor]], scaling: float, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """The plain model's (name, tensor) pairs from a LoRA model's, in ``dtype``.

    ``weights`` are checkpoint names of the LoRA model (``X.base_layer.weight``,
    ``X.lora_A.default.weight``, ``X.lora_B.default.weight``, ...), e.g. a state dict or the
    full weights gathered from shards, in any order. Each adapted layer comes out once as
    ``X.weight = W + scaling * B @ A`` (computed in float32 or finer); every other tensor passes
    through, renamed from ``X.base_layer.*`` to ``X.*``. A layer whose base or factors are
    missing raises, rather than an engine silently sampling from the unadapted weights.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        prefix, part = _lora_part(name)
        if prefix is None:
            yield name.replace(".base_layer.", "."), tensor.to(dtype)
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = tensor
        if len(parts) == 3:
            del pending[prefix]
            acc = torch.promote_types(dtype, torch.float32)  # never below fp32
            delta = parts["B"].to(acc) @ parts["A"].to(acc)
            yield f"{prefix}.weight", (parts["W"].to(acc) + scaling * delta).to(dtype)
    if pending:
        raise RuntimeError(
            "merged_weights: incomplete LoRA layers (base weight or factors missing): "
            + ", ".join(f"{p} has {sorted(v)}" for p, v in sorted(pending.items()))
        )


def _lora_part(name: str) -> tuple[str | None, str]:
    """(layer prefix, 'W' | 'A' | 'B') for the three tensors of an adapted weight."""
    for suffix, part in (
        (".base_layer.weight", "W"),
        (f".lora_A.{_ADAPTER}.weight", "A"),
        (f".lora_B.{_ADAPTER}.weight", "B"),
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)], part
    return None, ""


def save_adapter(
    wrapped: Any, out: Path, full_state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the adapter as peft does (``adapter_config.json``, ``adapter_model.safetensors``).

    ``full_state``: the LoRA model's full weights under checkpoint names (gathered from shards,
    where the wrapper's own tensors are only this rank's pieces); None reads the wrapper's.
    """
    state = None
    if full_state is not None:
        # peft names the wrapper's entries base_model.model.<transformers name>
        state = {f"base_model.model.{k}": v for k, v in full_state.items()}
    # the embeddings are frozen and not adapted: the base model has them
    wrapped.save_pretrained(out, state_dict=state, save_embedding_layers=False)


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on, as its config records it."""
    config = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(config.read_text())[_BASE_KEY]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ModelError(
            f"{config}: cannot read the adapter's base model ({type(e).__name__}: {e})",
            hint=f"adapter_config.json needs {_BASE_KEY}, as grpo train writes it",
        ) from e
    if not base:
        raise ModelError(f"{config}: {_BASE_KEY} is empty; the adapter names no base model")
    return str(base)


def load_merged(path: str | Path, device: torch.device, *, trust_remote_code: bool = False):
    """The model an adapter directory stands for: its base with the adapter merged in (fp32)."""
    require_peft(f"{path}")
    from peft import PeftModel

    from grpo.train.models import load_policy, resolve_model_path

    base = load_policy(
        resolve_model_path(adapter_base(path)), device, trust_remote_code=trust_remote_code
    )
    try:
        wrapped = PeftModel.from_pretrained(base, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"{path}: cannot load the LoRA adapter: {type(e).__name__}: {e}",
            hint="the directory needs adapter_config.json and adapter_model.safetensors, as "
            "grpo train writes them in final/",
        ) from e
    return wrapped.merge_and_unload()


def base_name_for_adapter(name_or_path: str) -> str:
    """``model.name_or_path`` as an adapter should record it: builtin and hub ids as given, a
    local directory as an absolute path (the run may be evaluated from another directory)."""
    from grpo.train.models import BUILTIN_PREFIX

    if name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.exists() else name_or_path
