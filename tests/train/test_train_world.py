"""World.shares: each rank's share of a global count, or an error naming the key."""

from __future__ import annotations

import pytest

from grpo.errors import ConfigError
from grpo.train.distributed import World


def test_a_count_splits_evenly_over_the_ranks() -> None:
    assert World(rank=1, world_size=4).shares(32, "train.batch_size") == 8
    assert World().shares(7, "train.batch_size") == 7


def test_an_uneven_count_is_a_config_error_naming_the_key_and_the_ranks() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size=10 .* ranks \(4\)"):
        World(rank=0, world_size=4).shares(10, "train.batch_size")
