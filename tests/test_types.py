"""Shared types: the batch-size rule, replica states, backends."""

from __future__ import annotations

import json

import msgpack
import pytest

from schooner.types import (BACKENDS, LIVE_REPLICA_STATES, SERVING_REPLICA_STATES, BatchSize, InputType, ModelSpec,
                            ReplicaState)


@pytest.mark.parametrize("value, adaptive, size", [(-1, True, -1), ("adaptive", True, -1), (" Adaptive", True, -1),
                                                   (1, False, 1), (64, False, 64)])
def test_batch_size_is_fixed_or_adaptive(value, adaptive, size):
    rule = BatchSize.parse(value)
    assert rule.adaptive is adaptive and rule == size


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "8", None])
def test_bad_batch_sizes_are_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        BatchSize.parse(value)


def test_batch_size_travels_as_a_plain_integer():
    spec = ModelSpec("m", "1", InputType.FLOATS, batch_size="adaptive")
    assert spec.batch_size is BatchSize.ADAPTIVE
    assert json.dumps(spec.batch_size) == "-1" and msgpack.unpackb(msgpack.packb(spec.batch_size)) == -1
    assert repr(BatchSize(8)) == "8"  # redis-py writes ints with repr()


def test_live_and_serving_replica_states():
    assert LIVE_REPLICA_STATES == {ReplicaState.READY, ReplicaState.BUSY, ReplicaState.DRAINING}
    assert SERVING_REPLICA_STATES < LIVE_REPLICA_STATES
    assert ReplicaState.DRAINING.live and not ReplicaState.DEAD.live and not ReplicaState.STARTING.live
    assert "process" in BACKENDS and "docker" in BACKENDS
