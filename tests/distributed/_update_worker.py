"""Run under ``torchrun --nproc-per-node 2``: one policy update on 1 process vs on 2 ranks.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed/_update_worker.py \
        MODEL_DIR OUT.json

For each case (aggregation, micro-batch rows, micro-batch token budget) every rank first
computes the single-process update on the whole batch with a plain copy of the model (the
reference result), then the sharded update on its half of the rows (rank r takes rows r,
r + 2, ...: an interleaved split, so the ranks' halves differ in length, and under a token
budget in their number of micro-batches). The recorded gradients are gathered to full
tensors; rank 0 writes the largest relative difference and the metrics of both per case.
"""

from __future__ import annotations

import copy
import json
import sys
from types import SimpleNamespace

import torch

from grpo.config import load_config
from grpo.train.batch import build_batch
from grpo.train.distributed import SINGLE, init_world, shutdown
from grpo.train.logprob_pass import PolicyLogprobs
from grpo.train.models import load_policy
from grpo.train.sharding import shard
from grpo.train.update import batch_logprobs, micro_plan, update_policy

PROMPTS = [[56, 81, 98, 5], [40, 41], [56, 81], [7, 8, 9, 10, 11], [40, 41], [3, 4, 5], [9], [5, 6]]
COMPLETIONS = [
    [12, 13, 14, 2],
    [20, 21],
    [30, 31, 32, 33, 34, 35, 36, 37],
    [7],
    [60, 61, 62, 63, 64],
    [70, 71, 72],
    [80, 81, 82, 83, 84, 85],
    [90, 91],
]
ADV = torch.tensor([1.0, -0.5, -0.5, 1.2, 0.3, -1.5, 0.7, -0.2])
MAX_NEW = 8


class GradRecorder(torch.optim.Optimizer):
    """Records the full gradient of every parameter and changes nothing."""

    def __init__(self, params):
        super().__init__(list(params), {"lr": 0.0})
        self.recorded: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                grad = p.grad
                full = getattr(grad, "full_tensor", None)
                self.recorded.append((full() if callable(full) else grad).clone())


def run_update(world, model, reference, cfg, rows):
    optimizer = GradRecorder(model.parameters())
    run = SimpleNamespace(
        cfg=cfg,
        world=world,
        model=model,
        reference=reference,
        compute_dtype=None,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
    )
    batch = build_batch(
        [PROMPTS[i] for i in rows], [COMPLETIONS[i] for i in rows], ADV[rows], pad_id=0
    )
    batch.ref_logprobs = batch_logprobs(run, reference, batch)
    micro = [batch.rows(i) for i in micro_plan(run, batch)]
    metrics = update_policy(run, micro, batch, beta=0.1)
    return metrics, optimizer.recorded


CASES = [
    ("grpo", 3, 0),
    ("dapo", 8, 0),
    ("dr_grpo", 2, 20),  # a token budget: the ranks plan different numbers of micro-batches
    ("grpo", 8, 14),
    ("bnpo", 4, 0),
]


def one_case(world, model_dir, aggregation, mbs, mbt):
    cfg = load_config(
        None,
        [
            f"rollout.max_new_tokens={MAX_NEW}",
            "rollout.temperature=0.9",
            "optim.max_grad_norm=0",
            "model.dtype=float32",
            "algorithm.beta=0.1",
            f"algorithm.loss_aggregation={aggregation}",
            f"train.micro_batch_size={mbs}",
            f"train.micro_batch_tokens={mbt}",
        ],
    )
    policy = load_policy(model_dir, torch.device("cpu"))
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ref.requires_grad_(False)

    whole_m, whole_g = run_update(
        SINGLE, copy.deepcopy(policy), copy.deepcopy(ref), cfg, list(range(len(PROMPTS)))
    )
    sharded = shard(PolicyLogprobs(copy.deepcopy(policy)), world, None)
    sharded_ref = shard(PolicyLogprobs(copy.deepcopy(ref)), world, None)
    if aggregation == "bnpo":
        # a token mean per micro-batch: equal only for the same micro-batches, so each rank
        # takes a contiguous half, which is one micro-batch of the whole-batch split
        half = len(PROMPTS) // world.world_size
        mine = list(range(world.rank * half, (world.rank + 1) * half))
    else:
        mine = list(range(world.rank, len(PROMPTS), world.world_size))
    dist_m, dist_g = run_update(world, sharded, sharded_ref, cfg, mine)
    diffs = [
        float((a - b).abs().max() / max(float(a.abs().max()), 1e-3))
        for a, b in zip(whole_g, dist_g, strict=True)
    ]
    keys = ("loss", "kl", "entropy", "num_tokens", "num_sequences", "ratio_mean")
    return {
        "case": [aggregation, mbs, mbt],
        "max_rel_grad_diff": max(diffs),
        "num_grads": len(diffs),
        "metrics_whole": {k: whole_m.get(k) for k in keys},
        "metrics_dist": {k: dist_m.get(k) for k in keys},
    }


def main() -> None:
    model_dir, out = sys.argv[1:3]
    torch.manual_seed(0)
    world = init_world()
    reports = [one_case(world, model_dir, *case) for case in CASES]
    if world.is_main:
        with open(out, "w") as f:
            json.dump(reports, f)
    shutdown(world)


if __name__ == "__main__":
    main()
