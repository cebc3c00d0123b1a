"""The prompt sampler and TrainState: passes, reshuffles, and an exact resume from state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from grpo.train.state import PromptSampler, TrainState, pass_order


def _take(sampler: PromptSampler, n: int, size: int) -> list[list[int]]:
    return [sampler.take(size) for _ in range(n)]


def test_every_row_once_per_pass_and_each_pass_reshuffled():
    s = PromptSampler(7, seed=0)
    flat = [i for b in _take(s, 7, 3) for i in b]  # 21 rows = exactly 3 passes
    passes = [flat[0:7], flat[7:14], flat[14:21]]
    for p in passes:
        assert sorted(p) == list(range(7))
    assert passes[0] != passes[1] or passes[1] != passes[2]
    assert s.pass_index == 3 and s.offset == 0 and s.consumed == 21


def test_a_batch_across_a_pass_boundary_finishes_the_pass_then_starts_the_next():
    s = PromptSampler(5, seed=2)
    first = pass_order(5, 2, 0, True)
    second = pass_order(5, 2, 1, True)
    assert s.take(4) == first[:4]
    assert s.take(3) == first[4:] + second[:2]
    assert (s.pass_index, s.offset) == (1, 2)


def test_pass_zero_is_random_seed_shuffle():
    # the order the trainer always used for its first pass
    want = list(range(10))
    random.Random(3).shuffle(want)
    assert pass_order(10, 3, 0, True) == want


def test_reproducible_from_seed_and_different_across_seeds():
    a = _take(PromptSampler(10, seed=3), 6, 4)
    b = _take(PromptSampler(10, seed=3), 6, 4)
    c = _take(PromptSampler(10, seed=4), 6, 4)
    assert a == b and a != c


def test_without_shuffle_rows_come_in_order():
    assert _take(PromptSampler(5, seed=0, shuffle=False), 3, 2) == [[0, 1], [2, 3], [4, 0]]


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="needs 5 prompts but the training set has only 4"):
        PromptSampler(4, seed=0).take(5)


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 7, 10])  # mid-pass and exactly at pass ends
def test_resume_from_state_dict_continues_the_same_stream(cut):
    whole = PromptSampler(6, seed=9)
    reference = _take(whole, 12, 3)
    first = PromptSampler(6, seed=9)
    _take(first, cut, 3)
    state = first.state_dict()
    resumed = PromptSampler(6, seed=9)
    resumed.load_state_dict(state)
    assert _take(resumed, 12 - cut, 3) == reference[cut:]


def test_resume_against_other_data_or_seed_is_refused():
    s = PromptSampler(6, seed=9)
    s.take(4)
    state = s.state_dict()
    with pytest.raises(ValueError, match="covered 6 training rows, this run has 7"):
        PromptSampler(7, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="prompt order differs"):
        PromptSampler(6, seed=10).load_state_dict(state)


def test_train_state_restores_step_sampler_and_every_rng():
    state = TrainState(PromptSampler(8, seed=1), step=3)
    state.sampler.take(5)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    saved = state.state_dict()
    want = (random.random(), float(np.random.rand()), float(torch.rand(())), state.sampler.take(2))

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    other = TrainState(PromptSampler(8, seed=1))
    other.load_state_dict(saved)
    assert other.step == 3
    got = (random.random(), float(np.random.rand()), float(torch.rand(())), other.sampler.take(2))
    assert got == want
