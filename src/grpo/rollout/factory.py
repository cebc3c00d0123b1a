"""Build the generation engine a run asks for: ``transformers``, ``vllm`` or ``auto``."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo.errors import ConfigError, ModelError
from grpo.rollout.base import RolloutEngine
from grpo.rollout.transformers_engine import TransformersEngine

ENGINE_KINDS = ("auto", "transformers", "vllm")


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
) -> RolloutEngine:
    """The engine for ``kind``.

    ``"transformers"`` samples from ``model`` itself. ``"vllm"`` runs vLLM in this process,
    loads ``model_path`` once, then takes ``model``'s current weights (so a policy changed after
    loading is what gets sampled); it fails with install instructions when vllm does not
    import. ``"auto"`` is vLLM when it imports, else transformers.

    ``max_batch_rows`` bounds the sequences generated at once (vLLM: ``max_num_seqs``, unless
    ``vllm_max_num_seqs`` is given: the KV cache is sized for that many sequences);
    ``max_model_len`` is prompt + completion tokens (vLLM only; None = the model's limit).
    """
    if kind not in ENGINE_KINDS:
        raise ConfigError(
            f"rollout.engine: unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}"
        )
    chosen_by_auto = kind == "auto"
    if kind == "auto":
        from grpo.rollout.vllm_engine import vllm_available

        kind = "vllm" if vllm_available() else "transformers"
    if kind == "transformers":
        return TransformersEngine(
            model, tokenizer, autocast_dtype=autocast_dtype, max_batch_rows=max_batch_rows
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
