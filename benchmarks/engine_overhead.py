"""What the vLLM engine costs inside a training step, against vLLM's own ``generate``.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv/bin/python benchmarks/engine_overhead.py

Runs real GRPO steps of the trainer with ``rollout.engine=vllm`` (the shipped tiny model,
4 prompts x G=8 x 64 tokens with EOS ignored, as the tiny TRL comparison) and reads, per
step, the seconds of the engine's part of the step: ``time/generate`` (our ``generate``:
request building, vLLM, turning outputs into token ids, text and log-probs) plus
``time/sync`` (pushing the new weights into vLLM and resetting its prefix cache). Then,
in the same process and on the same engine, it times ``LLM.generate`` alone on the same
requests (same sampling parameters). Steps and raw calls alternate so machine noise hits both.
Prints medians and the ratio; the target in issue 3 is at most 1.15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grpo.config import load_config  # noqa: E402
from grpo.train.experience import round_seed, sampling_settings  # noqa: E402
from grpo.train.loop import rl_step  # noqa: E402
from grpo.train.setup import setup  # noqa: E402
from grpo.train.state import PromptSampler, TrainState  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up)")
    ap.add_argument("--out", default="/tmp/grpo-engine-overhead")
    args = ap.parse_args()

    cfg = load_config(
        None,
        [
            "rollout.engine=vllm",
            "rollout.ignore_eos=true",
            "rollout.max_new_tokens=64",
            "algorithm.group_size=8",
            "train.batch_size=32",
            "train.micro_batch_size=32",
            f"train.steps={args.steps + 2}",
            "train.eval_every=0",
            "data.num_eval_prompts=1",
            "log.progress_bar=false",
            f"train.output_dir={args.out}-{int(time.time())}",
        ],
    )
    run = setup(cfg)
    engine = run.engine
    from vllm.inputs import TokensPrompt

    state = TrainState(PromptSampler(len(run.train_rows), seed=0, shuffle=True))
    in_step: list[float] = []
    sync: list[float] = []
    raw: list[float] = []
    for step in range(1, args.steps + 3):
        row_ids_probe = list(range(4 * step, 4 * step + 4))  # fresh prompts: no cache hits
        m = rl_step(run, state)
        # the same requests straight to vLLM: 4 prompts, n = 8, the step's sampling settings
        settings = sampling_settings(cfg, round_seed(cfg, step, 0))
        prompts = [TokensPrompt(prompt_token_ids=run.train_prompt_ids[i]) for i in row_ids_probe]
        params = [engine._sampling_params(settings, i) for i in range(len(prompts))]
        t = time.perf_counter()
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t
        assert sum(len(o.token_ids) for out in outputs for o in out.outputs) == 4 * 8 * 64
        if step > 2:  # warm-up excluded
            in_step.append(m["time/generate"] + m["time/sync"])
            sync.append(m["time/sync"])
            raw.append(dt)
    ours, theirs = statistics.median(in_step), statistics.median(raw)
    report = {
        "steps": args.steps,
        "engine_in_step_s_median": round(ours, 4),
        "of_which_sync_s_median": round(statistics.median(sync), 4),
        "vllm_generate_s_median": round(theirs, 4),
        "ratio": round(ours / theirs, 3),
        "tokens_per_call": 4 * 8 * 64,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
