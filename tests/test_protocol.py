"""Wire protocol: round trips over real ZMQ sockets, zero-copy decoding, malformed messages."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from schooner import errors, protocol
from schooner.defaults import PROTOCOL_VERSION
from schooner.errors import ProtocolError
from schooner.protocol import ErrorCode, MsgType


@pytest.fixture
def pair():
    """A DEALER connected to a ROUTER on a free loopback port; yields a send-then-receive function."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}")

    def transfer(frames: list) -> list[zmq.Frame]:
        dealer.send_multipart(frames, copy=False)
        assert router.poll(30_000), "message did not arrive"
        return router.recv_multipart(copy=False)[1:]  # drop the identity frame

    yield transfer
    router.close(linger=0)
    dealer.close(linger=0)
    ctx.term()


def test_stacked_batch_round_trips_as_zero_copy_views(pair):
    batch = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    meta, frames = protocol.encode_items(batch)
    assert len(frames) == 1
    hdr, payload = protocol.unpack(pair(protocol.pack(protocol.header(MsgType.PREDICT, batch_id=3, items=meta),
                                                      frames)))
    assert hdr["type"] == "predict" and hdr["batch_id"] == 3 and hdr["v"] == PROTOCOL_VERSION
    items = protocol.decode_items(hdr["items"], payload)
    assert len(items) == 4
    for i, item in enumerate(items):
        np.testing.assert_array_equal(item, batch[i])
        assert np.shares_memory(item, np.frombuffer(payload[0].buffer, dtype=np.uint8))  # no copy


def test_mixed_list_round_trips(pair):
    values = [np.array([1, 2, 3], dtype=np.int32), b"\x00raw\xff", "ünïcode", np.float64(2.5), [1.0, 2.0]]
    meta, frames = protocol.encode_items(values)
    hdr, payload = protocol.unpack(pair(protocol.pack(protocol.header(MsgType.QUERY, id=1, app="a", items=meta),
                                                      frames)))
    out = protocol.decode_items(hdr["items"], payload)
    np.testing.assert_array_equal(out[0], values[0])
    assert out[0].dtype == np.int32
    assert out[1] == b"\x00raw\xff" and out[2] == "ünïcode"
    assert out[3].shape == () and float(out[3]) == 2.5
    np.testing.assert_array_equal(out[4], [1.0, 2.0])


def test_non_contiguous_arrays_are_sent_contiguous():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    meta, frames = protocol.encode_items([arr])
    out = protocol.decode_items(meta, [np.asarray(frames[0]).tobytes()])
    np.testing.assert_array_equal(out[0], arr)


def test_error_message_carries_code_message_and_ids():
    hdr, payload = protocol.unpack(protocol.error(ErrorCode.MODEL_ERROR, "boom", batch_id=9))
    assert hdr == {"v": PROTOCOL_VERSION, "type": "error", "code": "model_error", "message": "boom",
                   "batch_id": 9}
    assert payload == []


def test_error_codes_map_to_named_errors():
    for code, (status, cls) in errors.ERROR_TABLE.items():
        assert cls.code == code.value and errors.http_status(code.value) == status
        if issubclass(cls, errors.SchoonerError) and cls is not errors.QueryTimeout:
            err = errors.from_code(code.value, "msg")
            assert type(err) is cls and str(err) == "msg" and err.http_status == status
        else:
            assert type(errors.from_code(code.value, "x")) is errors.SchoonerError  # not sent on the wire
    assert set(errors.ERROR_TABLE) == set(ErrorCode)
    assert type(errors.from_code("unheard_of", "x")) is errors.SchoonerError
    assert errors.http_status("unheard_of") == 500
    assert errors.Overloaded.http_status == 429 and errors.NotFound.status == 404


@pytest.mark.parametrize("frames, message", [
    ([], "empty"),
    ([b"\xc1"], "msgpack"),
    ([msgpack.packb([1, 2])], "map"),
    ([msgpack.packb({"v": PROTOCOL_VERSION + 1, "type": "query"})], "version"),
    ([msgpack.packb({"v": PROTOCOL_VERSION})], "type"),
    ([msgpack.packb({"v": PROTOCOL_VERSION, "type": "launch_missiles"})], "type"),
])
def test_malformed_headers_raise_protocol_error(frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.unpack(frames)


@pytest.mark.parametrize("meta, frames, message", [
    ({"stack": ["<f4", [2, 2]]}, [b"\x00" * 4], "needs 16 bytes"),
    ({"stack": ["<f4", [3000000]]}, [b""], "needs 12000000 bytes"),
    ({"stack": ["<f4", [1] * 40]}, [b"\x00" * 4], "at most 32"),
    ({"stack": ["<f4", [1]]}, [b"\x00" * 4, b"\x00" * 4], "one frame"),
    ({"stack": 5}, [b"\x00" * 4], "stack meta"),
    ({"stack": ["not-a-dtype", [1]]}, [b"\x00" * 4], "not allowed"),
    ({"stack": ["|O", [1]]}, [b"\x00" * 8], "not allowed"),
    ({"stack": [{"a": 1}, [1]]}, [b"\x00" * 8], "not allowed"),
    ({"stack": ["x" * 1_000_000, [1]]}, [b"\x00" * 8], "not allowed"),
    ({"list": [["a", "<f4", [1]]]}, [], "1 items but 0 frames"),
    ({"list": [["x", None, None]]}, [b"a"], "kind"),
    ({"list": [["a", "<f4"]]}, [b"abcd"], "kind, dtype, shape"),
    ({"list": [["s", None, None]]}, [b"\xff\xfe"], "UTF-8"),
    ({"tuple": []}, [], "items must be"),
    (None, [], "items must be"),
])
def test_malformed_items_raise_protocol_error(meta, frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_items(meta, frames)


def test_unencodable_items_are_refused():
    with pytest.raises(ValueError, match="axis"):
        protocol.encode_items(np.array(1.0, dtype=np.float32))
    with pytest.raises(TypeError):
        protocol.encode_items([object()])


def test_a_batch_of_like_arrays_goes_to_the_replica_as_one_stacked_frame():
    items = [np.full(4, i, dtype=np.float32) for i in range(3)]
    metas = [["a", "<f4", [4]] for _ in items]
    frames = protocol.predict(7, "m", "1", metas, [a.data for a in items])
    hdr, payload = protocol.unpack(frames)
    assert hdr["items"] == {"stack": ["<f4", [3, 4]]} and len(payload) == 1
    assert [a.tolist() for a in protocol.decode_items(hdr["items"], payload)] == [a.tolist() for a in items]
    mixed = protocol.predict(8, "m", "1", [["a", "<f4", [4]], ["a", "<f4", [2]]],
                             [items[0].data, np.zeros(2, np.float32).data])
    assert protocol.unpack(mixed)[0]["items"]["list"] == [["a", "<f4", [4]], ["a", "<f4", [2]]]


def test_one_clients_stacked_frame_that_fills_a_batch_is_forwarded_without_a_copy():
    frame = zmq.Frame(np.arange(8, dtype=np.float32).tobytes())
    view = frame.buffer
    slices = [view[0:16], view[16:32]]
    frames = protocol.predict(9, "m", "1", [["a", "<f4", [4]], ["a", "<f4", [4]]], slices)
    assert frames[-1] is frame
    half = protocol.predict(10, "m", "1", [["a", "<f4", [4]]] * 1 + [["a", "<f4", [4]]], [slices[0], slices[0]])
    assert half[-1] is not frame and len(bytes(half[-1])) == 32
