"""Client library against a real ROUTER socket acting as the frontend."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

import numpy as np
import pytest
import zmq

from schooner import protocol
from frontend.client import AsyncClient, Client, Prediction
from schooner.errors import ModelError, Overloaded, QueryTimeout, SchoonerError, UnknownApp
from schooner.protocol import ErrorCode, MsgType

Handler = Callable[["FakeFrontend", bytes, dict, list], None]


class FakeFrontend:
    """A ROUTER on a free loopback port, served by a thread calling ``handler`` per message."""

    def __init__(self, handler: Handler, on_idle: Callable[["FakeFrontend"], None] | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.handler = handler
        self.on_idle = on_idle
        self.headers: list[dict] = []
        self.max_pending = 0
        self.pending: list[tuple[bytes, dict, list]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(200):  # idle: nothing for 200 ms
                if self.on_idle is not None:
                    self.on_idle(self)
                continue
            ident, *frames = self.sock.recv_multipart(copy=False)
            hdr, payload = protocol.unpack(frames)
            self.headers.append(hdr)
            self.handler(self, ident.bytes, hdr, payload)

    def reply(self, ident: bytes, frames: list) -> None:
        self.sock.send_multipart([ident, *frames], copy=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close(linger=0)
        self.ctx.term()


def echo(fe: FakeFrontend, ident: bytes, hdr: dict, payload: list) -> None:
    """Answer every query with its own inputs as outputs."""
    items = protocol.decode_items(hdr["items"], payload)
    meta, frames = protocol.encode_items(items)
    fe.reply(ident, protocol.pack(protocol.header(MsgType.REPLY, id=hdr["id"], query_id=1000 + hdr["id"],
                                                  items=meta, default=False), frames))


@pytest.fixture
def frontend_factory():
    made: list[FakeFrontend] = []

    def make(handler: Handler, on_idle=None) -> FakeFrontend:
        fe = FakeFrontend(handler, on_idle)
        made.append(fe)
        return fe

    yield make
    for fe in made:
        fe.close()


def test_predict_returns_the_replied_output_with_client_latency(frontend_factory):
    fe = frontend_factory(echo)
    with Client(fe.address, timeout_s=20) as client:
        pred = client.predict("app", np.array([1.5, 2.5], dtype=np.float32))
    assert isinstance(pred, Prediction)
    np.testing.assert_array_equal(pred.output, [1.5, 2.5])
    assert pred.default is False and pred.default_explanation is None
    assert pred.query_id == 1001
    assert pred.latency_s > 0
    assert fe.headers[0]["app"] == "app"


def test_numpy_input_travels_as_one_stacked_frame(frontend_factory):
    fe = frontend_factory(echo)
    with Client(fe.address, timeout_s=20) as client:
        client.predict("app", np.zeros((3, 4), dtype=np.float64))
    assert fe.headers[0]["items"] == {"stack": ["<f8", [1, 3, 4]]}


def test_list_input_is_converted_to_the_requested_dtype(frontend_factory):
    fe = frontend_factory(echo)
    with Client(fe.address, timeout_s=20, input_type="doubles") as client:
        assert client.predict("app", [1, 2, 3]).output.dtype == np.float64
        assert client.predict("app", [1, 2, 3], dtype="ints").output.dtype == np.int32
        assert client.predict("app", np.array([1, 2], dtype=np.int64)).output.dtype == np.float64
    with Client(fe.address, timeout_s=20) as client:
        assert client.predict("app", [1, 2]).output.dtype == np.int32
        assert client.predict("app", [1.0, 2.0]).output.dtype == np.float32
        assert client.predict("app", [1.0], dtype=np.float64).output.dtype == np.float64
    dtypes = [h["items"]["stack"][0] for h in fe.headers]
    assert dtypes == ["<f8", "<i4", "<f8", "<i4", "<f4", "<f8"]


def test_bytes_and_str_inputs_round_trip(frontend_factory):
    fe = frontend_factory(echo)
    with Client(fe.address, timeout_s=20) as client:
        assert client.predict("app", b"\x00\x01raw").output == b"\x00\x01raw"
        assert client.predict("app", "héllo").output == "héllo"


def test_predict_batch_sends_one_query_and_reports_per_output_defaults(frontend_factory):
    def handler(fe, ident, hdr, payload):
        n = len(protocol.decode_items(hdr["items"], payload))
        meta, frames = protocol.encode_items(["a"] * (n - 1) + ["None"])
        fe.reply(ident, protocol.pack(protocol.header(
            MsgType.REPLY, id=hdr["id"], query_id=7, items=meta, default=True,
            defaults=[False] * (n - 1) + [True], default_explanation="deadline passed"), frames))

    fe = frontend_factory(handler)
    with Client(fe.address, timeout_s=20) as client:
        preds = client.predict_batch("app", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert len(fe.headers) == 1
    assert [p.output for p in preds] == ["a", "a", "None"]
    assert [p.default for p in preds] == [False, False, True]
    assert preds[2].default_explanation == "deadline passed" and preds[0].default_explanation is None
    assert {p.query_id for p in preds} == {7}


def _error_handler(code: str, **extra):
    def handler(fe, ident, hdr, payload):
        fe.reply(ident, protocol.pack(protocol.header(MsgType.ERROR, id=hdr["id"], code=code,
                                                      message=f"{code} happened", **extra)))
    return handler


@pytest.mark.parametrize("code, cls", [("unknown_app", UnknownApp), ("model_error", ModelError),
                                       ("something_new", SchoonerError)])
def test_error_reply_raises_the_named_error(frontend_factory, code, cls):
    fe = frontend_factory(_error_handler(code))
    with Client(fe.address, timeout_s=20) as client:
        with pytest.raises(cls, match=f"{code} happened") as info:
            client.predict("app", [1.0])
    assert type(info.value) is cls


def test_overloaded_reply_carries_retry_after(frontend_factory):
    fe = frontend_factory(_error_handler(ErrorCode.OVERLOADED.value, retry_after_s=3))
    with Client(fe.address, timeout_s=20) as client:
        with pytest.raises(Overloaded) as info:
            client.predict("app", [1.0])
    assert info.value.retry_after_s == 3.0


def test_no_reply_raises_a_timeout(frontend_factory):
    fe = frontend_factory(lambda *args: None)
    with Client(fe.address, timeout_s=0.3) as client:
        with pytest.raises(QueryTimeout):
            client.predict("app", [1.0])
        with pytest.raises(TimeoutError):
            client.predict_batch("app", [[1.0]])


def test_late_reply_is_not_taken_for_the_next_query(frontend_factory):
    held: list[tuple[bytes, dict, list]] = []

    def handler(fe, ident, hdr, payload):
        if hdr["id"] == 1:
            held.append((ident, hdr, payload))  # answered only after the next query arrives
            return
        for old in held:
            echo(fe, *old)
        held.clear()
        echo(fe, ident, hdr, payload)

    fe = frontend_factory(handler)
    with Client(fe.address, timeout_s=0.5) as client:
        with pytest.raises(QueryTimeout):
            client.predict("app", [1.0])
        client.timeout_s = 20
        assert client.predict("app", [2.0]).output[0] == 2.0


def _reverse_batches(size: int):
    """Answer queries in reverse order, ``size`` at a time (or whatever is held when idle)."""

    def flush(fe):
        while fe.pending:
            echo(fe, *fe.pending.pop())

    def handler(fe, ident, hdr, payload):
        fe.pending.append((ident, hdr, payload))
        fe.max_pending = max(fe.max_pending, len(fe.pending))
        if len(fe.pending) >= size:
            flush(fe)

    return handler, flush


def test_predict_many_keeps_concurrency_in_flight_and_matches_replies_by_id(frontend_factory):
    handler, flush = _reverse_batches(8)
    fe = frontend_factory(handler, on_idle=flush)
    inputs = [np.array([float(i)], dtype=np.float32) for i in range(50)]
    with Client(fe.address, timeout_s=20) as client:
        results = client.predict_many("app", inputs, concurrency=8)
    assert [float(r.output[0]) for r in results] == [float(i) for i in range(50)]
    assert fe.max_pending == 8  # the window filled, and never overfilled
    assert len(fe.headers) == 50


def test_predict_many_returns_errors_and_timeouts_in_place(frontend_factory):
    def handler(fe, ident, hdr, payload):
        value = float(protocol.decode_items(hdr["items"], payload)[0][0])
        if value == 3.0:
            _error_handler("model_error")(fe, ident, hdr, payload)
        elif value != 5.0:  # input 5 is never answered
            echo(fe, ident, hdr, payload)

    fe = frontend_factory(handler)
    with Client(fe.address, timeout_s=1.0) as client:
        results = client.predict_many("app", [[float(i)] for i in range(8)], concurrency=3)
    assert isinstance(results[3], ModelError)
    assert isinstance(results[5], QueryTimeout)
    assert [float(results[i].output[0]) for i in (0, 1, 2, 4, 6, 7)] == [0.0, 1.0, 2.0, 4.0, 6.0, 7.0]


def test_client_rejects_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        Client("tcp://127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError, match="dtype"):
        Client("tcp://127.0.0.1:1", input_type=object())


def test_async_client_predicts_maps_errors_and_times_out(frontend_factory):
    def handler(fe, ident, hdr, payload):
        value = protocol.decode_items(hdr["items"], payload)[0]
        if isinstance(value, str) and value == "fail":
            _error_handler("unknown_app")(fe, ident, hdr, payload)
        elif not (isinstance(value, str) and value == "silent"):
            echo(fe, ident, hdr, payload)

    fe = frontend_factory(handler)

    async def scenario():
        async with AsyncClient(fe.address, timeout_s=0.5) as client:
            pred = await client.predict("app", [1.0, 2.0])
            batch = await client.predict_batch("app", ["x", "y"])
            with pytest.raises(UnknownApp):
                await client.predict("app", "fail")
            with pytest.raises(QueryTimeout):
                await client.predict("app", "silent")
            return pred, batch

    pred, batch = asyncio.run(scenario())
    np.testing.assert_array_equal(pred.output, [1.0, 2.0])
    assert [p.output for p in batch] == ["x", "y"]


def test_async_predict_many_keeps_concurrency_in_flight(frontend_factory):
    handler, flush = _reverse_batches(5)
    fe = frontend_factory(handler, on_idle=flush)

    async def scenario():
        async with AsyncClient(fe.address, timeout_s=20) as client:
            return await client.predict_many("app", [[float(i)] for i in range(40)], concurrency=5)

    results = asyncio.run(scenario())
    assert [float(r.output[0]) for r in results] == [float(i) for i in range(40)]
    assert fe.max_pending == 5


def test_malformed_messages_from_the_frontend_are_skipped(frontend_factory):
    def handler(fe, ident, hdr, payload):
        fe.reply(ident, [b"\xc1 garbage"])
        echo(fe, ident, hdr, payload)

    fe = frontend_factory(handler)
    with Client(fe.address, timeout_s=20) as client:
        assert client.predict("app", [3.0]).output[0] == 3.0
        assert [float(r.output[0]) for r in client.predict_many("app", [[1.0], [2.0]])] == [1.0, 2.0]
