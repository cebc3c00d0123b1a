"""How a LoRA policy's weights should reach vLLM: merged weights, or vLLM's own LoRA adapters.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv/bin/python benchmarks/lora_sync.py --config medium

Both ways on the benchmark model of ``benchmarks/vs_trl.py`` with rank-R adapters on every
linear layer, for several rounds of "the adapters changed, now generate one step's batch"
(prompts x G completions of max_new_tokens, EOS ignored, temperature 1):

- merged: ``W + (alpha / r) B A`` computed by ``grpo.train.lora.merged_weights`` and reloaded
  in place (what the trainer does), then generation by the plain model;
- vLLM LoRA: the adapter saved as a peft directory, then generation with a new
  ``LoRARequest`` (``enable_lora=True``), which loads it and applies the factors in every
  forward.

Prints seconds per round (sync or save, generate, total) for each, medians over the rounds
after the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))

from vs_trl import CONFIGS, build_model  # noqa: E402


def _adapted_policy(model_dir: Path, rank: int):
    import torch
    from transformers import AutoModelForCausalLM

    from grpo.train.lora import add_lora

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    wrapped = add_lora(
        model, rank=rank, alpha=2 * rank, dropout=0.0, target_modules=[], base_name=str(model_dir)
    )
    return model, wrapped


def _perturb(model, round_: int) -> None:
    """A new adapter state, as after an optimizer step (B starts at 0 in peft)."""
    import torch

    g = torch.Generator().manual_seed(round_)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


def _llm(model_dir: Path, max_len: int, seqs: int, lora_rank: int):
    from vllm import LLM

    kw = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if lora_rank else {}
    return LLM(
        model=str(model_dir),
        dtype="bfloat16",
        max_model_len=max_len,
        max_num_seqs=seqs,
        enable_prefix_caching=True,
        generation_config="vllm",
        kv_cache_memory_bytes=2 * 2**30,
        seed=0,
        **kw,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="medium", choices=sorted(CONFIGS))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--mode", choices=["merged", "vllm-lora", "both"], default="both")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from grpo.rollout.vllm_engine import _reload_on_worker
    from grpo.train.lora import lora_scaling, merged_weights, save_adapter
    from grpo.train.sharding import checkpoint_name

    shape = CONFIGS[args.config]
    model_dir = REPO / "runs" / "bench" / args.config / "model"
    if not (model_dir / "config.json").is_file():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        build_model(shape, model_dir, seed=0)
    n = shape.prompts_per_step
    prompts = [[1, *range(20, 30)] for _ in range(n)]  # 11 tokens, like the benchmark's
    seqs = n * shape.group_size
    params = SamplingParams(
        n=shape.group_size,
        temperature=1.0,
        max_tokens=shape.max_new_tokens,
        ignore_eos=True,
        seed=0,
    )
    max_len = 11 + shape.max_new_tokens
    model, wrapped = _adapted_policy(model_dir, args.rank)
    scaling = lora_scaling(2 * args.rank, args.rank)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    results: dict[str, list[tuple[float, float]]] = {}

    modes = ["merged", "vllm-lora"] if args.mode == "both" else [args.mode]
    for mode in modes:
        llm = _llm(model_dir, max_len, seqs, args.rank if mode == "vllm-lora" else 0)
        rounds = []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                _perturb(model, r)
                t0 = time.perf_counter()
                if mode == "merged":
                    state = ((checkpoint_name(k), v) for k, v in model.state_dict().items())
                    weights = merged_weights(state, scaling, torch.bfloat16)
                    llm.collective_rpc(_reload_on_worker, args=(weights,))
                    llm.reset_prefix_cache()
                    request = None
                else:
                    out = Path(tmp) / f"adapter-{r}"
                    save_adapter(wrapped, out)
                    request = LoRARequest(f"step-{r}", r + 1, str(out))
                t1 = time.perf_counter()
                llm.generate(inputs, params, use_tqdm=False, lora_request=request)
                t2 = time.perf_counter()
                rounds.append((t1 - t0, t2 - t1))
                print(f"{mode} round {r}: sync {t1 - t0:.3f} s, generate {t2 - t1:.3f} s")
        results[mode] = rounds[1:]
        del llm
        from vllm.distributed import parallel_state

        parallel_state.cleanup_dist_env_and_memory()

    print()
    print(
        f"{args.config} ({shape.hidden} x {shape.layers}), rank {args.rank} on every linear "
        f"layer, {n} x {shape.group_size} x {shape.max_new_tokens} tokens per round"
    )
    print("| weights to vLLM | sync or save (s) | generate (s) | total (s) |")
    print("|---|---|---|---|")
    for mode, rounds in results.items():
        sync = statistics.median(a for a, _ in rounds)
        gen = statistics.median(b for _, b in rounds)
        print(f"| {mode} | {sync:.3f} | {gen:.3f} | {sync + gen:.3f} |")


if __name__ == "__main__":
    main()
