"""train.micro_batch_tokens = auto (train/token_budget.py): the activation estimate worked out by
hand, the CPU cap, the memory limit, and the plan it gives the update."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from grpo.config import load_config
from grpo.train.batch import build_batch
from grpo.train.distributed import SINGLE
from grpo.train.token_budget import (
    CPU_PASS_TOKENS,
    activation_bytes_per_token,
    auto_token_budget,
    balanced_rows,
)
from grpo.train.update import micro_plan

# the medium benchmark model's shape
MEDIUM = SimpleNamespace(hidden_size=512, num_hidden_layers=8, num_attention_heads=8)
CPU = torch.device("cpu")


def test_activation_estimate_by_hand():
    # Korthikanti et al. 2022: 34 h + 5 a s bytes per token and layer
    assert activation_bytes_per_token(MEDIUM, 139, False) == 8 * (34 * 512 + 5 * 8 * 139)
    # checkpointing: every layer's 2 h-byte input plus one layer recomputed
    assert activation_bytes_per_token(MEDIUM, 139, True) == 8 * 2 * 512 + 34 * 512 + 5 * 8 * 139


def test_budget_cpu_cap_and_memory_limit():
    plenty = 64 * 2**30
    assert auto_token_budget(MEDIUM, CPU, plenty, seq_len=139, checkpointing=False) == (
        CPU_PASS_TOKENS
    )
    per_token = activation_bytes_per_token(MEDIUM, 139, False)  # 183,744 bytes
    scarce = 500 * per_token  # half of it: 250 tokens
    assert auto_token_budget(MEDIUM, CPU, scarce, seq_len=139, checkpointing=False) == 250
    # checkpointing keeps less per token, so the same memory allows more
    more = auto_token_budget(MEDIUM, CPU, scarce, seq_len=139, checkpointing=True)
    assert more == int(0.5 * scarce // activation_bytes_per_token(MEDIUM, 139, True)) > 500
    assert auto_token_budget(MEDIUM, CPU, 0, seq_len=139, checkpointing=False) == 1


def test_balanced_rows():
    assert balanced_rows(64, 139, 2048) == 13  # 14 fit; 5 passes of 13, 13, 13, 13, 12
    assert balanced_rows(64, 139, 3072) == 22  # 3 passes: 22, 22, 20
    assert balanced_rows(32, 75, 2400) == 32  # all in one pass
    assert balanced_rows(5, 5000, 2048) == 1  # a row wider than the budget still gets a pass


def test_auto_plan_splits_evenly_and_keeps_every_row_once(tiny_model):
    cfg = load_config(None, ["train.micro_batch_size=64"])
    assert cfg.train.micro_batch_tokens == "auto"
    rows = 64
    batch = build_batch([[5] * 11] * rows, [[7] * 128] * rows, torch.zeros(rows), pad_id=0)
    run = SimpleNamespace(
        cfg=cfg, world=SINGLE, hf_model=SimpleNamespace(config=MEDIUM), free_memory=64 * 2**30
    )
    plan = micro_plan(run, batch)
    assert [len(p) for p in plan] == [13, 13, 13, 13, 12]
    assert sorted(torch.cat(plan).tolist()) == list(range(rows))
    # an explicit budget is used as it is (greedy packing, no balancing)
    cfg.train.micro_batch_tokens = 2048
    assert [len(p) for p in micro_plan(run, batch)] == [14, 14, 14, 14, 8]
    cfg.train.micro_batch_tokens = 0
    assert [len(p) for p in micro_plan(run, batch)] == [64]
