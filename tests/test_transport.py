"""schooner.transport: whole messages in and out without pyzmq's per-frame overhead; drops logged sparingly."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import zmq

from frontend.zmq_endpoints import _DropLog
from schooner.transport import recv_frames, send_frames


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"d")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_multipart_message_arrives_whole_with_every_buffer_kind(pair):
    router, dealer = pair
    send_frames(dealer, [b"hdr", memoryview(b"view"), np.arange(3.0)], noblock=False)
    assert router.poll(10_000)
    frames = recv_frames(router)
    assert [bytes(f) for f in frames[:3]] == [b"d", b"hdr", b"view"]
    assert np.frombuffer(frames[3], dtype=np.float64).tolist() == [0.0, 1.0, 2.0]
    send_frames(router, [b"d", b"only"])
    assert dealer.poll(10_000)
    assert [bytes(f) for f in recv_frames(dealer)] == [b"only"]


def test_nothing_waiting_is_again_and_an_unknown_peer_is_unreachable(pair):
    router, dealer = pair
    with pytest.raises(zmq.Again):
        recv_frames(dealer)
    with pytest.raises(zmq.ZMQError) as err:
        send_frames(router, [b"nobody", b"x"])
    assert err.value.errno == zmq.EHOSTUNREACH


def test_dropped_messages_are_counted_but_logged_once_per_interval(caplog):
    drops = _DropLog("client-router", interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="frontend.zmq_endpoints"):
        for _ in range(1000):
            drops.dropped("to a peer not reading", b"p")
    assert drops.total == 1000
    assert len(caplog.records) == 1 and "1 to a peer not reading" in caplog.records[0].getMessage()


def _io_thread_policies() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1:stat.rindex(")")].startswith("ZMQbg/IO"):
            out[tid] = int(stat[stat.rindex(")") + 2:].split()[38])  # field 41: policy
    return out


@pytest.mark.parametrize("setting, policy", [(None, os.SCHED_BATCH), ("normal", os.SCHED_OTHER)])
def test_io_threads_run_under_sched_batch_unless_told_otherwise(monkeypatch, setting, policy):
    from schooner.transport import set_io_thread_policy
    if setting is not None:
        monkeypatch.setenv("SCHOONER_ZMQ_IO_POLICY", setting)
    before = _io_thread_policies()
    ctx = zmq.Context()
    try:
        set_io_thread_policy(ctx)
        sock = ctx.socket(zmq.PAIR)  # the I/O thread starts with the first socket,
        try:  # and sets its own policy as it starts
            deadline = time.monotonic() + 5
            while True:
                mine = [p for tid, p in _io_thread_policies().items() if tid not in before]
                if mine == [policy] or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert mine == [policy]
        finally:
            sock.close(0)
    finally:
        ctx.term()


def test_an_unknown_io_thread_policy_is_a_clear_error(monkeypatch):
    from schooner.transport import set_io_thread_policy
    monkeypatch.setenv("SCHOONER_ZMQ_IO_POLICY", "fifo")
    ctx = zmq.Context()
    try:
        with pytest.raises(ValueError, match="SCHOONER_ZMQ_IO_POLICY must be 'batch' or 'normal'"):
            set_io_thread_policy(ctx)
    finally:
        ctx.term()
