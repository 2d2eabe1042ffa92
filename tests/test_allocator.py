"""CpuAllocator: disjoint placements of the asked size, refusals that name the problem."""

from __future__ import annotations

import os

import pytest

from management.allocator import CpuAllocator, Placement
from schooner.topology import detect_gpus, online_cpus, parse_cpu_list
from management.errors import AllocationError


def test_parse_cpu_list_reads_kernel_ranges():
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_cpu_list("0,1") == [0, 1]
    with pytest.raises(ValueError, match="not a cpu id"):
        parse_cpu_list("a-b")


def test_online_cpus_ignores_own_affinity():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert online_cpus() == CpuAllocator().available
        assert len(online_cpus()) >= len(before)
    finally:
        os.sched_setaffinity(0, before)


def test_placements_are_disjoint_and_of_the_asked_size():
    alloc = CpuAllocator(available=list(range(8)))
    placements = alloc.allocate(3, 2, pool=[7, 6, 5, 4, 3, 2], gpus=[])
    assert [len(p.cpus) for p in placements] == [2, 2, 2]
    flat = [c for p in placements for c in p.cpus]
    assert len(set(flat)) == 6 and set(flat) == {2, 3, 4, 5, 6, 7}
    assert all(p.gpu is None for p in placements)


def test_default_pool_is_every_online_cpu():
    alloc = CpuAllocator(available=[0, 1, 2, 3])
    assert [p.cpus for p in alloc.allocate(4, 1)] == [[0], [1], [2], [3]]


def test_nonexistent_cpu_is_refused_by_name():
    alloc = CpuAllocator(available=[0, 1])
    with pytest.raises(AllocationError, match=r"cpu\(s\) \[20, 21\] do not exist"):
        alloc.allocate(1, 1, pool=[1, 20, 21])


def test_more_replicas_than_the_pool_allows_is_refused():
    alloc = CpuAllocator(available=list(range(4)))
    with pytest.raises(AllocationError, match="need 6 cpus, but the pool .* has only 4"):
        alloc.allocate(3, 2, pool=[0, 1, 2, 3])


def test_bad_sizes_are_refused():
    alloc = CpuAllocator(available=[0, 1])
    with pytest.raises(AllocationError, match="cpus_per_replica"):
        alloc.allocate(1, 0)
    with pytest.raises(AllocationError, match="num_replicas"):
        alloc.allocate(-1, 1)
    with pytest.raises(AllocationError, match="twice"):
        alloc.allocate(1, 1, pool=[0, 0])


def test_gpu_that_does_not_exist_is_refused_clearly():
    alloc = CpuAllocator(available=[0, 1], gpus=[])
    with pytest.raises(AllocationError, match=r"gpu\(s\) \[0\] do not exist: this machine has no GPU"):
        alloc.allocate(1, 1, gpus=[0])


def test_detected_gpus_on_this_machine_refuse_requests_beyond_them():
    alloc = CpuAllocator(available=[0, 1])
    with pytest.raises(AllocationError, match="do not exist"):
        alloc.allocate(1, 1, gpus=[len(detect_gpus()) + 3])


def test_one_gpu_per_replica_while_gpus_last_then_cpu_only():
    alloc = CpuAllocator(available=list(range(4)), gpus=[0, 1])
    placements = alloc.allocate(3, 1, gpus=[1])
    assert [p.gpu for p in placements] == [1, None, None]


def test_scaling_up_keeps_existing_cores_and_adds_disjoint_ones():
    alloc = CpuAllocator(available=list(range(4)))
    first = alloc.allocate(1, 2, owner="m:1")
    alloc.claim("r1", "m:1", first[0])
    more = alloc.allocate(1, 2, owner="m:1", keep=[alloc.placement_of("r1")])
    assert first[0].cpus == [0, 1] and more[0].cpus == [2, 3]
    with pytest.raises(AllocationError, match="need 6 cpus"):
        alloc.allocate(2, 2, owner="m:1", keep=first)


def test_other_models_cores_are_avoided_then_refused_unless_sharing():
    alloc = CpuAllocator(available=[0, 1, 2])
    alloc.claim("a1", "a:1", Placement([0]))
    alloc.claim("a2", "a:1", Placement([1]))
    assert alloc.allocate(1, 1, owner="b:1")[0].cpus == [2]
    with pytest.raises(AllocationError, match="held by other models"):
        alloc.allocate(2, 1, owner="b:1")
    shared = alloc.allocate(2, 1, owner="b:1", share=True)
    assert len({c for p in shared for c in p.cpus}) == 2 and 2 in shared[0].cpus + shared[1].cpus
    alloc.release("a1")
    alloc.release("a2")
    assert alloc.in_use() == {}


def test_the_frontends_cores_are_used_last():
    alloc = CpuAllocator(available=[0, 1, 2])
    assert alloc.allocate(1, 1, pool=[0, 1], avoid=[0])[0].cpus == [1]  # `-c 0 1`, frontend on 0
    assert [p.cpus for p in alloc.allocate(2, 1, pool=[0, 1], avoid=[0])] == [[1], [0]]  # all of them: both
    alloc.claim("a1", "a:1", Placement([2]))
    shared = alloc.allocate(2, 1, pool=[0, 2], owner="b:1", share=True, avoid=[0])
    assert sorted(c for p in shared for c in p.cpus) == [0, 2]
