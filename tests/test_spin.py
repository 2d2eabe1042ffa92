"""Replica spin policy: spin only on owned cores, adaptively when unknown; the manager's verdict."""

from __future__ import annotations

import os

import pytest

from containers.replica import _parse_args
from containers.spin import MIN_HIT_RATE, PROBE_EVERY, SpinMode, SpinPolicy
from management.allocator import CpuAllocator, Placement
from management.manager import ReplicaManager
from management.replica_launch import launch_spec
from schooner.types import InputType, ModelSpec


@pytest.mark.parametrize("owns, window", [(True, 1_000_000), (False, 0), (None, 1_000_000)])
def test_placement_mode_spins_only_where_the_manager_says_the_cores_are_owned(owns, window):
    policy = SpinPolicy(1000, SpinMode.PLACEMENT, owns)
    assert policy.after_batch() == window
    assert policy.adaptive is (owns is None)


def test_zero_spin_us_never_spins_whatever_the_mode():
    for mode in SpinMode:
        assert SpinPolicy(0, mode, True).after_batch() == 0


def test_adaptive_spinning_pauses_when_spins_find_no_work_and_probes_again():
    policy = SpinPolicy(500, SpinMode.ADAPTIVE, owns_cores=True)
    while policy.hit_rate >= MIN_HIT_RATE:
        assert policy.after_batch() == 500_000
        policy.ended(hit=False)
    windows = [policy.after_batch() for _ in range(PROBE_EVERY)]
    assert windows.count(500_000) == 1  # one probe in PROBE_EVERY batches
    for _ in range(30):
        policy.ended(hit=True)
    assert policy.after_batch() == 500_000  # hits bring spinning back


def test_contended_spin_counts_as_a_miss_even_when_the_message_came():
    policy = SpinPolicy(500, SpinMode.ADAPTIVE)
    for _ in range(20):
        policy.ended(hit=True, contended=True)
    assert policy.hit_rate < MIN_HIT_RATE and policy.contended == 20
    assert policy.after_batch() == 0


def test_always_mode_ignores_the_hit_rate():
    policy = SpinPolicy(500, SpinMode.ALWAYS, owns_cores=False)
    for _ in range(50):
        policy.ended(hit=False)
    assert policy.after_batch() == 500_000


def test_replica_flags_take_spin_mode_and_owns_cores(monkeypatch):
    monkeypatch.delenv("SCHOONER_OWNS_CORES", raising=False)
    config = _parse_args(["--model", "noop", "--spin-mode", "adaptive", "--owns-cores", "no"])
    assert config.spin_mode is SpinMode.ADAPTIVE and config.owns_cores is False
    monkeypatch.setenv("SCHOONER_OWNS_CORES", "yes")
    assert _parse_args(["--model", "noop"]).owns_cores is True
    with pytest.raises(SystemExit):
        _parse_args(["--model", "noop", "--spin-mode", "sometimes"])


def _manager(frontend_cpus=None, available=(0, 1, 2, 3)) -> ReplicaManager:
    return ReplicaManager(None, None, CpuAllocator(list(available), gpus=[]), frontend_rpc="tcp://127.0.0.1:9",
                          frontend_http_url="", frontend_cpus=frontend_cpus)


def test_manager_says_a_replica_owns_cores_away_from_the_frontend_and_other_models():
    manager = _manager(frontend_cpus=[0])
    assert manager.owns_cores([0], "a:1") is False  # with the frontend
    assert manager.owns_cores([1, 2], "a:1") is True
    manager.allocator.claim("b-1", "b:1", Placement([2]))
    assert manager.owns_cores([2], "a:1") is False  # with another model's replica (shared pool)
    assert manager.owns_cores([2], "b:1") is True  # its own claim


def test_unpinned_frontend_inherits_the_managers_affinity_or_is_unknown():
    mine = sorted(os.sched_getaffinity(0))
    everything = _manager(available=mine)
    assert everything.owns_cores(mine[:1], "a:1") is None  # the frontend may run anywhere
    wider = _manager(available=[*mine, max(mine) + 1])  # this process is pinned to part of the machine
    assert wider.owns_cores(mine[:1], "a:1") is False
    assert wider.owns_cores([max(mine) + 1], "a:1") is True


def test_launch_spec_tells_the_replica_what_the_manager_knows():
    model = ModelSpec(name="noop", version="1", input_type=InputType.FLOATS)
    spec = launch_spec(model, "r1", Placement([1]), "tcp://127.0.0.1:9", {}, owns_cores=False)
    assert spec.env["SCHOONER_OWNS_CORES"] == "no"
    assert "SCHOONER_OWNS_CORES" not in launch_spec(model, "r1", Placement([1]), "tcp://x:9", {}).env
