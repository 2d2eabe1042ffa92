"""Validation at the edge: every bad query gets its named error, and the frontend keeps serving."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import requests
import zmq
from frontend_support import FrontendThread, start_replica, stop_process
from polling import wait_for

from schooner import protocol
from frontend.client import Client
from schooner.errors import BadInput, NoModel, Overloaded, UnknownApp
from schooner.protocol import MsgType
from schooner.types import AppSpec, ModelSpec


@pytest.fixture(scope="module")
def limited_frontend():
    """A frontend with small size limits and a model ("nobody") that no replica serves."""
    ft = FrontendThread(max_input_bytes=1024, max_message_bytes=4096).start()
    ft.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000),
               AppSpec("orphan", "floats"),
               AppSpec("jam", "floats", latency_slo_micros=600_000_000)],
              [ModelSpec("noop", "1", "floats", batch_size=4, input_shape=[4]),
               ModelSpec("nobody", "1", "floats", max_queue_size=2)],
              {"app": ["noop"], "jam": ["nobody"]})
    proc = start_replica(ft.replica_address, "noop")
    ft.wait_ready(1)
    yield ft
    stop_process(proc)
    ft.stop()


@pytest.fixture(scope="module")
def client(limited_frontend):
    with Client(limited_frontend.client_address, timeout_s=30) as c:
        yield c


@pytest.fixture
def raw(limited_frontend):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(limited_frontend.client_address)
    yield sock
    sock.close()
    ctx.term()


def _x(n: int = 4, dtype: type = np.float32) -> np.ndarray:
    return np.ones(n, dtype=dtype)


def test_valid_query_is_answered(client):
    assert not client.predict("app", _x()).default


def test_unknown_app_is_refused(client, limited_frontend):
    with pytest.raises(UnknownApp):
        client.predict("nope", _x())
    resp = requests.post(f"{limited_frontend.http_url}/nope/predict", json={"input": [1.0]}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"] == "unknown_app"


def test_app_without_a_linked_model_is_no_model_on_zmq_and_clippers_default_on_http(client, limited_frontend):
    with pytest.raises(NoModel):  # Schooner's own client path stays strict
        client.predict("orphan", _x())
    resp = requests.post(f"{limited_frontend.http_url}/orphan/predict", json={"input": [1.0] * 4}, timeout=10)
    assert resp.status_code == 200 and resp.json()["default"] is True  # Clipper's path: the default output


def test_wrong_input_type_is_bad_input(client):
    with pytest.raises(BadInput, match="floats"):
        client.predict("app", _x(dtype=np.int32), dtype="ints")
    with pytest.raises(BadInput, match="kind"):
        client.predict("app", "a string")


def test_wrong_shape_is_bad_input(client, limited_frontend):
    with pytest.raises(BadInput, match="shape"):
        client.predict("app", _x(3))
    resp = requests.post(f"{limited_frontend.http_url}/app/predict", json={"input": [1.0, 2.0]}, timeout=10)
    assert resp.status_code == 400 and "shape" in resp.json()["message"]


def test_oversized_input_and_message_are_bad_input(client):
    with pytest.raises(BadInput, match="limit"):
        client.predict("app", _x(1000))
    with pytest.raises(BadInput, match="limit"):  # every frame is small; together they are over the limit
        client.predict_batch("app", [np.ones(200, dtype=np.float32)] * 8)


def test_malformed_header_gets_protocol_error_and_loop_continues(raw, client):
    raw.send_multipart([b"\xc1\xc1 not msgpack"])
    hdr, _ = protocol.unpack(raw.recv_multipart())
    assert hdr["type"] == "error" and hdr["code"] == "protocol_error"
    assert not client.predict("app", _x()).default


def test_other_protocol_version_gets_protocol_error_with_its_id(raw):
    raw.send_multipart([msgpack.packb({"v": 99, "type": "query", "id": 7, "app": "app"})])
    reply = msgpack.unpackb(raw.recv_multipart()[0])
    assert reply["code"] == "protocol_error" and reply["id"] == 7 and "version" in reply["message"]


def test_items_that_disagree_with_frames_get_protocol_error(raw):
    hdr = protocol.header(MsgType.QUERY, id=3, app="app", items={"list": [["a", "<f4", [4]]] * 2})
    raw.send_multipart(protocol.pack(hdr, [_x()]))
    reply = msgpack.unpackb(raw.recv_multipart()[0])
    assert reply["code"] == "protocol_error" and reply["id"] == 3


def test_full_queue_is_overloaded_at_once(limited_frontend):
    # "nobody" has no replica and room for 2 queries; two held there keep it full for the app's
    # objective (minutes), so the queries below meet a full queue however slow the machine is.
    fe = limited_frontend
    ctx = zmq.Context()
    filler = ctx.socket(zmq.DEALER)
    filler.setsockopt(zmq.LINGER, 0)
    filler.connect(fe.client_address)
    try:
        for request_id in (1, 2):
            meta, frames = protocol.encode_items([_x()])
            filler.send_multipart(protocol.query(request_id, "jam", meta, frames))
        wait_for(lambda: fe.call(fe.fe.queue_depth, "nobody", "1") == 2, 60, "the jam queue to fill")
        with Client(fe.client_address, timeout_s=30) as c:
            with pytest.raises(Overloaded) as info:
                c.predict("jam", _x())
        assert info.value.retry_after_s >= 1
        resp = requests.post(f"{fe.http_url}/jam/predict", json={"input": [1.0] * 4}, timeout=30)
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"] == "overloaded"
        assert fe.call(fe.fe.queue_depth, "nobody", "1") == 2  # the held queries were not dropped
        assert not filler.poll(0)  # nor answered
    finally:
        filler.close()
        ctx.term()


@pytest.mark.parametrize("body, field", [
    (b"{not json", "JSON"),
    (b'{"inp": [1.0]}', "input"),
    (b'{"input": ["a", "b", "c", "d"]}', "input"),
    (b'{"input": 3}', "input"),
    (b'{"input_batch": [[1.0, 1.0, 1.0, 1.0], ["x"]]}', "input_batch[1]"),
    (b"\xff\xfe{}", "request body is not valid JSON"),
    (b"[1.0, 2.0]", "request body must be a JSON object"),
    (b'{"input": [[1.0, 2.0], [3.0]]}', "field 'input' must be a rectangular list of numbers"),
    (b'{"input": [true, false, true, true]}', "field 'input' must hold only numbers"),
    (b'{"input_batch": []}', "field 'input_batch' must be a non-empty list of inputs"),
])
def test_http_bad_body_is_400_naming_the_field(limited_frontend, body, field):
    resp = requests.post(f"{limited_frontend.http_url}/app/predict", data=body, timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "bad_input"
    assert field in resp.json()["message"]
