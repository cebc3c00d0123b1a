"""Build the generation engine a run asks for: ``transformers``, ``vllm`` or ``auto``."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo.errors import ConfigError, ModelError
from grpo.rollout.base import RolloutEngine
from grpo.rollout.transformers_engine import TransformersEngine

ENGINE_KINDS = ("auto", "transformers", "vllm")

# Below this many parameters outside the embeddings, auto prefers the transformers engine's
# compiled static-cache decoding to vLLM's CPU engine: a small model's decode step is overhead,
# about 4.5 ms per step in vLLM on CPU whatever the model. Measured on the two benchmark models
# (docs/benchmarks.md): Llama 256x4 (4.2 M) generates in 0.23 s static vs 0.42 s vLLM, Llama
# 512x8 (25 M) in 3.06 s vs 2.6 s; 12 M is near where the log-linear fit of the two crosses.
STATIC_DECODE_MAX_PARAMS = 12_000_000


def resolve_engine_kind(
    kind: str, *, model: torch.nn.Module | None = None, static_decode: bool = False
) -> str:
    """``transformers`` or ``vllm`` for ``rollout.engine``.

    auto: transformers when vLLM does not import; also when ``static_decode`` is possible (a
    CPU run, see ``static_decode_wanted``) and ``model`` has fewer than
    STATIC_DECODE_MAX_PARAMS parameters outside its embeddings; vLLM otherwise."""
    if kind not in ENGINE_KINDS:
        raise ConfigError(
            f"rollout.engine: unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}"
        )
    if kind != "auto":
        return kind
    from grpo.rollout.vllm_engine import vllm_available

    if not vllm_available():
        return "transformers"
    if static_decode and model is not None and decode_parameters(model) < STATIC_DECODE_MAX_PARAMS:
        return "transformers"
    return "vllm"


def decode_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the input embeddings (a tied output head counts once, with them)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in skip and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def make_engine(
    kind: str,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_path: str,
    autocast_dtype: torch.dtype | None,
    max_batch_rows: int,
    vllm_memory_fraction: float,
    max_model_len: int | None,
    seed: int,
    trust_remote_code: bool = False,
    vllm_enforce_eager: bool = False,
    vllm_max_num_seqs: int | None = None,
    static_decode: bool = False,
) -> RolloutEngine:
    """The engine for ``kind``.

    ``"transformers"`` samples from ``model`` itself. ``"vllm"`` runs vLLM in this process,
    loads ``model_path`` once, then takes ``model``'s current weights (so a policy changed after
    loading is what gets sampled); it fails with install instructions when vllm does not
    import. ``"auto"``: see ``resolve_engine_kind``.

    ``max_batch_rows`` bounds the sequences generated at once (vLLM: ``max_num_seqs``, unless
    ``vllm_max_num_seqs`` is given: the KV cache is sized for that many sequences);
    ``max_model_len`` is prompt + completion tokens (vLLM only; None = the model's limit).
    ``static_decode``: the transformers engine's compiled static-cache decoding (see
    ``TransformersEngine``) is possible here; auto then takes it for small models.
    """
    chosen_by_auto = kind == "auto"
    kind = resolve_engine_kind(kind, model=model, static_decode=static_decode)
    if kind == "transformers":
        return TransformersEngine(
            model,
            tokenizer,
            autocast_dtype=autocast_dtype,
            max_batch_rows=max_batch_rows,
            static_decode=static_decode,
        )
    from grpo.rollout.vllm_engine import VLLMEngine  # its constructor says how to install vllm

    try:
        engine = VLLMEngine(
            model_path,
            tokenizer,
            dtype=autocast_dtype,
            memory_fraction=vllm_memory_fraction,
            max_model_len=max_model_len,
            seed=seed,
            max_num_seqs=vllm_max_num_seqs or max_batch_rows,
            enforce_eager=vllm_enforce_eager,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        if not chosen_by_auto:
            raise
        # Say why vLLM was tried at all; falling back silently would hide a slow run.
        raise ModelError(
            f"rollout.engine=auto chose vLLM (it is installed), which could not serve "
            f"{model_path}: {e}. Set rollout.engine=transformers to generate with transformers."
        ) from e
    engine.sync_weights(model)
    return engine
