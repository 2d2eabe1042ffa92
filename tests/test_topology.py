"""schooner.topology: cpu lists, online cpus, GPU ids under CUDA_VISIBLE_DEVICES (no GPU needed)."""

from __future__ import annotations

import pytest

from schooner import topology


@pytest.mark.parametrize("spec, cpus", [("0-3,6", [0, 1, 2, 3, 6]), ("2,1,1", [1, 2]), (" 0 - 1 ,4\n", [0, 1, 4]),
                                        ([3, 1], [1, 3]), ((), [])])
def test_cpu_lists_parse_to_sorted_distinct_ids(spec, cpus):
    assert topology.parse_cpu_list(spec) == cpus


@pytest.mark.parametrize("spec, message", [("a-b", "is not a cpu id"), ("3-1", "bad range"), ("-2", "is not a cpu id"),
                                           ("", "names no cpu"), ([1, -1], ">= 0"), ([True], "integers")])
def test_bad_cpu_lists_are_refused_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        topology.parse_cpu_list(spec)


def test_cpu_lists_format_compactly():
    assert topology.format_cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert topology.parse_cpu_list(topology.format_cpu_list([9, 3, 4])) == [3, 4, 9]


def test_online_cpus_are_a_superset_of_this_process_affinity():
    assert set(topology.allowed_cpus()) <= set(topology.online_cpus())


@pytest.mark.parametrize("visible, gpus", [("2,3", [2, 3]), ("1", [1]), ("", []), ("-1", []), ("0,-1,2", [0]),
                                           ("GPU-8a1b", []), ("1,1", [1])])
def test_cuda_visible_devices_names_the_gpus_on_offer(visible, gpus):
    assert topology.visible_gpus({"CUDA_VISIBLE_DEVICES": visible}) == gpus
    assert topology.detect_gpus({"CUDA_VISIBLE_DEVICES": visible}) == gpus


def test_without_cuda_visible_devices_the_driver_decides():
    assert topology.visible_gpus({}) is None
    assert isinstance(topology.detect_gpus({}), list)
