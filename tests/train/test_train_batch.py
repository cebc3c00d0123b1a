"""RolloutBatch layout: left-padded prompts, right-padded completions, and row slicing."""

from __future__ import annotations

import pytest
import torch

from grpo.train.batch import build_batch

PAD = 0
PROMPTS = [[11, 12, 13], [21], [31, 32]]
COMPLETIONS = [[14], [22, 23, 24, 25], [33, 34]]
ADV = torch.tensor([0.5, -1.0, 2.0])


def _batch(**kw):
    return build_batch(PROMPTS, COMPLETIONS, ADV, PAD, **kw)


def test_build_batch_layout():
    b = _batch()
    # P = 3 (longest prompt), T = 4 (longest completion)
    assert b.prompt_width == 3
    assert b.completion_width == 4
    assert b.num_rows == 3
    expected_ids = torch.tensor(
        [
            [11, 12, 13, 14, 0, 0, 0],
            [0, 0, 21, 22, 23, 24, 25],
            [0, 31, 32, 33, 34, 0, 0],
        ]
    )
    expected_attn = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 0, 0],
        ]
    )
    expected_cmask = torch.tensor(
        [
            [1.0, 0, 0, 0],
            [1, 1, 1, 1],
            [1, 1, 0, 0],
        ]
    )
    torch.testing.assert_close(b.input_ids, expected_ids, rtol=0, atol=0)
    torch.testing.assert_close(b.attention_mask, expected_attn, rtol=0, atol=0)
    torch.testing.assert_close(b.completion_mask, expected_cmask, rtol=0, atol=0)
    assert b.input_ids.dtype == torch.long
    assert b.completion_mask.dtype == torch.float32
    assert b.advantages.dtype == torch.float32
    torch.testing.assert_close(b.advantages, ADV)
    assert b.old_logprobs is None and b.ref_logprobs is None
    # completion token j of every row sits in column P + j
    for i, c in enumerate(COMPLETIONS):
        assert b.input_ids[i, 3 : 3 + len(c)].tolist() == c


def test_loss_mask_keeps_tokens_but_drops_them_from_loss():
    b = _batch(loss_mask=[True, False, True])
    assert b.input_ids[1].tolist() == [0, 0, 21, 22, 23, 24, 25]
    assert b.attention_mask[1].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert b.completion_mask.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]


def test_empty_completion_row():
    b = build_batch([[5, 6], [7]], [[], [8, 9]], torch.zeros(2), PAD)
    assert b.input_ids.tolist() == [[5, 6, 0, 0], [0, 7, 8, 9]]
    assert b.attention_mask.tolist() == [[1, 1, 0, 0], [0, 1, 1, 1]]
    assert b.completion_mask.tolist() == [[0, 0], [1, 1]]
    # all completions empty: T is still 1 so the tensors keep a completion column
    b = build_batch([[5]], [[]], torch.zeros(1), PAD)
    assert b.completion_width == 1 and b.completion_mask.tolist() == [[0.0]]


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="one prompt per completion"):
        build_batch([[1], [2]], [[3]], torch.zeros(2), PAD)


def test_rows_trims_padding_and_keeps_data_aligned():
    b = _batch()
    b.old_logprobs = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b.ref_logprobs = -torch.arange(12, dtype=torch.float32).reshape(3, 4)

    # rows 0 and 2: prompt lengths 3 and 2 -> no left column dropped; completions 1 and 2 -> T=2
    sub = b.rows(torch.tensor([0, 2]))
    assert sub.prompt_width == 3
    assert sub.input_ids.tolist() == [[11, 12, 13, 14, 0], [0, 31, 32, 33, 34]]
    assert sub.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert sub.completion_mask.tolist() == [[1, 0], [1, 1]]
    assert sub.advantages.tolist() == [0.5, 2.0]
    assert sub.old_logprobs.tolist() == [[0, 1], [8, 9]]
    assert sub.ref_logprobs.tolist() == [[-0.0, -1], [-8, -9]]

    # rows 1..2: prompts 1 and 2 long -> one left pad column dropped, P = 2; T stays 4
    sub = b.rows(slice(1, 3))
    assert sub.prompt_width == 2
    assert sub.input_ids.tolist() == [[0, 21, 22, 23, 24, 25], [31, 32, 33, 34, 0, 0]]
    assert sub.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert sub.completion_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert sub.old_logprobs.tolist() == [[4, 5, 6, 7], [8, 9, 10, 11]]

    # row 1 alone: no padding at all
    sub = b.rows(slice(1, 2))
    assert sub.prompt_width == 1
    assert sub.input_ids.tolist() == [[21, 22, 23, 24, 25]]
    assert sub.attention_mask.tolist() == [[1, 1, 1, 1, 1]]
    # the original is untouched
    assert b.input_ids.shape == (3, 7) and b.prompt_width == 3


def test_micro_batches_cover_all_rows_in_order():
    b = _batch()
    micro = b.micro_batches(2)
    assert [m.num_rows for m in micro] == [2, 1]
    assert [m.prompt_width for m in micro] == [3, 2]
    assert [m.completion_width for m in micro] == [4, 2]
    assert torch.cat([m.advantages for m in micro]).tolist() == ADV.tolist()
    # every row's real tokens survive the trimming: prompt + completion, in order
    rebuilt = []
    for m in micro:
        for ids, attn in zip(m.input_ids, m.attention_mask, strict=True):
            rebuilt.append(ids[attn.bool()].tolist())
    assert rebuilt == [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    # completion tokens are exactly the columns P .. P + T under the completion mask
    completions = []
    for m in micro:
        cols = m.input_ids[:, m.prompt_width : m.prompt_width + m.completion_width]
        completions += [
            row[mask.bool()].tolist() for row, mask in zip(cols, m.completion_mask, strict=True)
        ]
    assert completions == COMPLETIONS
    # a size at least the batch gives one micro-batch equal to the batch
    (whole,) = b.micro_batches(8)
    assert torch.equal(whole.input_ids, b.input_ids)
    assert torch.equal(whole.completion_mask, b.completion_mask)


def test_token_budget_plan_packs_rows_by_length():
    # prompt lengths 2, 1, 3; completion lengths 3, 1, 2 -> padded widths per row 5, 2, 5
    b = build_batch([[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [10], [11, 12]], torch.zeros(3), 0)
    plan = b.plan(max_rows=8, max_tokens=10)
    # sorted by length: row 1 (2 tokens), row 0 (5), row 2 (5). Rows 1+0 pad to width
    # max(1,2) + max(1,3) = 5 -> 2 x 5 = 10 fits; adding row 2 gives 3 x (3 + 3) = 18 > 10.
    assert [p.tolist() for p in plan] == [[0, 1], [2]]
    assert sorted(i for p in plan for i in p.tolist()) == [0, 1, 2]
    # the row limit still holds under a large budget
    assert [p.tolist() for p in b.plan(max_rows=2, max_tokens=1000)] == [[0, 1], [2]]
    # no budget: consecutive runs of rows
    assert [p.tolist() for p in b.plan(max_rows=2)] == [[0, 1], [2]]
    assert [p.tolist() for p in b.plan(max_rows=1, max_tokens=1000)] == [[1], [0], [2]]
