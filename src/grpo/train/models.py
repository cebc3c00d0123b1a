"""Loading the policy, the frozen reference and the tokenizer; choosing the precision.

Where the model is comes first (``resolve_model_path``): a shipped ``builtin:`` model, a local
directory, or a Hugging Face hub id. Each failure is a ``ModelError`` naming the path or id,
raised before any weights load: a directory that does not exist, one that is not a model, a hub
id that is neither cached nor reachable (at once when ``HF_HUB_OFFLINE`` is set, or after one
connection attempt of a few seconds, instead of the hub client's retries).
"""

from __future__ import annotations

import copy
import os
import socket
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from grpo.errors import ModelError

BUILTIN_PREFIX = "builtin:"
# Seconds to wait for a TCP connection to the hub before calling it unreachable.
_HUB_CONNECT_TIMEOUT_S = 5.0
_KEY = "model.name_or_path"


def resolve_model_path(name_or_path: str) -> str:
    """The directory or hub id transformers should load for ``name_or_path``, checked.

    ``builtin:NAME`` names a model shipped in ``grpo/assets``. A name that exists on disk, or
    that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``), must be a model directory
    (with ``config.json``). Anything else is a hub id: it must be in the local cache or, unless
    ``HF_HUB_OFFLINE`` is set, reachable. Raises ``ModelError`` naming it otherwise.
    """
    if name_or_path.startswith(BUILTIN_PREFIX):
        return _builtin(name_or_path[len(BUILTIN_PREFIX) :])
    path = Path(name_or_path).expanduser()
    if path.exists() or _can_only_be_a_path(name_or_path):
        _check_model_dir(name_or_path, path)
        return name_or_path
    _check_hub_model(name_or_path, path)
    return name_or_path


def _builtin(name: str) -> str:
    assets = Path(str(resources.files("grpo") / "assets"))
    path = assets / name
    if not (path / "config.json").is_file():
        # the listing must not fail itself when no model is shipped at all
        shipped = sorted(p.name for p in assets.iterdir() if p.is_dir()) if assets.is_dir() else []
        raise ModelError(
            f"{_KEY}: no built-in model {name!r}; shipped: {', '.join(shipped) or 'none'}"
        )
    return str(path)


def _can_only_be_a_path(name: str) -> bool:
    if name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or "\\" in name:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _check_model_dir(name: str, path: Path) -> None:
    resolved = str(path.resolve())
    where = "" if resolved == name else f" (looked in {resolved})"
    if not path.exists():
        raise ModelError(
            f"{_KEY}: model directory {name} does not exist{where}",
            hint="give a directory holding config.json and the weights, a hub id such as "
            "Qwen/Qwen2.5-0.5B-Instruct, or builtin:tiny-arith",
        )
    if not path.is_dir():
        raise ModelError(
            f"{_KEY}: {name} is a file; expected a model directory holding config.json"
        )
    from grpo.train.lora import is_adapter_dir

    if is_adapter_dir(path):
        return  # a LoRA adapter (what grpo train writes in final/ with model.lora_rank > 0)
    if not (path / "config.json").is_file():
        final = path / "final"
        hint = (
            f"it looks like a run directory: its trained model is {final}"
            if (final / "config.json").is_file()
            else "a transformers model directory is what save_pretrained writes"
        )
        raise ModelError(f"{_KEY}: {name} has no config.json, so it is not a model", hint=hint)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _check_hub_model(name: str, path: Path) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return
    not_local = f"{name!r} is not a local directory ({path.resolve()} does not exist)"
    if _offline():
        raise ModelError(
            f"{_KEY}: {not_local} and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            "and HF_HUB_OFFLINE is set",
            hint="download it once with network access (unset HF_HUB_OFFLINE), or give the path "
            "of a model directory",
        )
    unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable:
        raise ModelError(
            f"{_KEY}: {not_local}, not in the Hugging Face cache, and {constants.ENDPOINT} "
            f"cannot be reached ({unreachable})",
            hint="check the network, or give the path of a model directory",
        )
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, "config.json")  # a few kB; the weights come later
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, HTTP errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"{_KEY}: {not_local}, and the Hugging Face hub does not give it: "
            f"{type(e).__name__}: {first}",
            hint="check the id (and, for a gated model, that you are logged in), or give "
            "the path of a model directory",
        ) from e


def _hub_unreachable(endpoint: str) -> str | None:
    """Why a TCP connection to the hub fails, or None when it succeeds (or a proxy is set:
    then only the client can tell)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=_HUB_CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError for missing files, ValueError/ImportError for odd ones
        raise ModelError(
            f"{_KEY}: cannot load the tokenizer of {path}: {_first_line(e)}",
            hint="the model directory needs its tokenizer files (tokenizer.json or "
            "tokenizer_config.json and the vocabulary), as save_pretrained writes them",
        ) from e
    if tokenizer.pad_token is None:
        # Padding is masked out everywhere; EOS is the usual stand-in (as in TRL and verl).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    path: str,
    device: torch.device,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
) -> PreTrainedModel:
    """The trained model, with fp32 master weights (compute runs under bf16 autocast). A LoRA
    adapter directory loads as its base model with the adapter merged in.

    ``attn_implementation``: auto loads transformers' default and, on CPU, switches SDPA to
    the matmul attention of training passes (train/cpu_attention.py); any other value is
    passed to transformers as it is."""
    from grpo.train.lora import is_adapter_dir, load_merged

    if is_adapter_dir(path):
        model = load_merged(path, device, trust_remote_code=trust_remote_code)
        return set_attention(model, attn_implementation)
    kw = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=trust_remote_code, **kw
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if isinstance(e, torch.OutOfMemoryError):
            raise
        raise ModelError(
            f"{_KEY}: cannot load the model in {path}: {_first_line(e)}",
            hint="the directory needs config.json and the weights (model.safetensors), as "
            "save_pretrained writes them, for a causal LM architecture",
        ) from e
    return set_attention(model.to(device), attn_implementation)


def set_attention(model: PreTrainedModel, attn_implementation: str) -> PreTrainedModel:
    """``model.attn_implementation`` applied to a loaded model (see :func:`load_policy`)."""
    if attn_implementation == "auto":
        from grpo.train.cpu_attention import use_cpu_training_attention

        use_cpu_training_attention(model)
    elif model.config._attn_implementation != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def frozen_reference(policy: PreTrainedModel, dtype: torch.dtype | None) -> PreTrainedModel:
    """A frozen copy of the policy's starting weights, in the compute dtype (no grads, no Adam)."""
    ref = copy.deepcopy(policy)
    if dtype is not None:
        ref = ref.to(dtype)
    ref.eval()
    ref.requires_grad_(False)
    return ref
