"""The one wire protocol of Schooner: frontend <-> replicas and clients <-> frontend.

A message is a multipart ZeroMQ message: one small msgpack *header* frame, then
zero or more raw *payload* frames, one per array/bytes/string item. On a ROUTER
socket the peer identity frame comes first and is not part of the message.

Header keys common to every message: ``v`` (protocol version), ``type``
(:class:`MsgType`). The rest depends on the type (see the ``*Header`` TypedDicts).

Items (inputs of a query or batch, outputs of a batch) are described in the header
under ``items`` by :func:`encode_items` and rebuilt by :func:`decode_items`:

- a stacked numpy batch: ``{"stack": [dtype, shape]}`` and one frame holding the
  whole C-contiguous array; decoded into per-item views of it (no copy);
- a list: ``{"list": [[kind, dtype, shape], ...]}`` with one frame per item, kind
  ``"a"`` (numpy array), ``"b"`` (bytes) or ``"s"`` (UTF-8 string).

Arrays travel as their raw buffers: sent with ``copy=False`` and received as
:class:`zmq.Frame`, decoded with :func:`numpy.frombuffer` (read-only views).
"""

from __future__ import annotations

import enum
from typing import Any, Sequence, TypedDict, Union

import msgpack
import numpy as np
import zmq

from schooner.defaults import PROTOCOL_VERSION
from schooner.errors import ProtocolError

Item = Union[np.ndarray, bytes, str]
FrameLike = Union[zmq.Frame, bytes, memoryview, np.ndarray]


class MsgType(str, enum.Enum):
    """Every message type on the wire."""

    HELLO = "hello"  # replica -> frontend: register
    WELCOME = "welcome"  # frontend -> replica: registered (carries heartbeat settings)
    HEARTBEAT = "heartbeat"  # both ways
    PREDICT = "predict"  # frontend -> replica: run a batch
    RESULT = "result"  # replica -> frontend: outputs of a batch, in input order
    BYE = "bye"  # replica -> frontend: draining, take no new batch
    QUERY = "query"  # client -> frontend: one input or a batch of inputs for an app
    REPLY = "reply"  # frontend -> client: output(s) of a query
    ERROR = "error"  # any direction: a named error about a request or batch


class ErrorCode(str, enum.Enum):
    """Names of the errors a peer can be told about."""

    UNKNOWN_APP = "unknown_app"
    NO_MODEL = "no_model"
    BAD_INPUT = "bad_input"
    OVERLOADED = "overloaded"
    MODEL_ERROR = "model_error"
    REPLICA_LOST = "replica_lost"
    PROTOCOL_ERROR = "protocol_error"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class HelloHeader(TypedDict, total=False):
    """HELLO: a replica registers."""

    v: int
    type: str
    replica_id: str
    model: str
    version: str
    input_type: str
    input_shape: list[int] | None
    pid: int
    pidns: str  # /proc/self/ns/pid link text: same namespace => the frontend may check the pid
    host: str
    cpus: list[int]
    gpu: int | None


class PredictHeader(TypedDict, total=False):
    """PREDICT: a batch for a replica; RESULT answers with the same batch_id."""

    v: int
    type: str
    batch_id: int
    items: dict


class QueryHeader(TypedDict, total=False):
    """QUERY: ``id`` is the client's request id, echoed in the REPLY or ERROR."""

    v: int
    type: str
    id: int
    app: str
    items: dict


class ReplyHeader(TypedDict, total=False):
    """REPLY to a QUERY: outputs in input order, and whether they are defaults."""

    v: int
    type: str
    id: int
    query_id: int
    items: dict
    default: bool  # true if any output is the app's default output
    defaults: list[bool]  # per output, for a query that carried several inputs
    default_explanation: str


class ErrorHeader(TypedDict, total=False):
    """ERROR: ``id`` (client request) or ``batch_id`` (replica batch), a code, a message."""

    v: int
    type: str
    id: int
    batch_id: int
    code: str
    message: str


_packb = msgpack.Packer(use_bin_type=True).pack


def header(msg_type: MsgType, **fields: Any) -> dict:
    """A header dict for ``msg_type`` with the protocol version."""
    fields["v"] = PROTOCOL_VERSION
    fields["type"] = msg_type.value
    return fields


def pack(hdr: dict, payload: Sequence[FrameLike] = ()) -> list[FrameLike]:
    """Frames of one message: the msgpack header, then the payload frames as they are."""
    return [_packb(hdr), *payload]


def unpack(frames: Sequence[FrameLike]) -> tuple[dict, list[FrameLike]]:
    """Split a received message into (header, payload frames).

    Raises :class:`ProtocolError` for an empty message, a header that is not a
    msgpack map, a missing/unknown type, or another protocol version.
    """
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    buf = raw.buffer if isinstance(raw, zmq.Frame) else raw
    try:
        hdr = msgpack.unpackb(buf, raw=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {err}") from err
    if not isinstance(hdr, dict):
        raise ProtocolError("header must be a msgpack map")
    version = hdr.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})")
    try:
        MsgType(hdr.get("type"))
    except ValueError:
        raise ProtocolError(f"unknown message type {hdr.get('type')!r}") from None
    return hdr, list(frames[1:])


def error(code: ErrorCode, message: str, **ids: Any) -> list[FrameLike]:
    """Frames of an ERROR message (``ids``: ``id=`` or ``batch_id=``)."""
    return pack(header(MsgType.ERROR, code=code.value, message=message, **ids))


def encode_items(items: np.ndarray | Sequence[Item]) -> tuple[dict, list[FrameLike]]:
    """Describe ``items`` for a header and return (items meta, payload frames).

    A numpy array is sent stacked (its first axis is the item axis) as one frame;
    a sequence is sent one frame per item. Arrays are made C-contiguous (a copy
    only when they are not already).
    """
    if isinstance(items, np.ndarray):
        if items.ndim == 0:  # checked first: ascontiguousarray would make it 1-d
            raise ValueError("a stacked batch needs at least one axis")
        arr = np.ascontiguousarray(items)
        return {"stack": [arr.dtype.str, list(arr.shape)]}, [arr]
    metas: list[list] = []
    frames: list[FrameLike] = []
    for item in items:
        if isinstance(item, np.ndarray):
            arr = np.ascontiguousarray(item)
            metas.append(["a", arr.dtype.str, list(arr.shape)])
            frames.append(arr)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            metas.append(["b", None, None])
            frames.append(item)
        elif isinstance(item, str):
            metas.append(["s", None, None])
            frames.append(item.encode("utf-8"))
        elif isinstance(item, zmq.Frame):
            raise TypeError("encode_items takes decoded items; forward frames with their meta instead")
        else:
            arr = np.asarray(item)
            if arr.dtype == object:
                raise TypeError(f"cannot encode item of type {type(item).__name__}")
            metas.append(["a", arr.dtype.str, list(arr.shape)])
            frames.append(np.ascontiguousarray(arr))
    return {"list": metas}, frames


def item_metas(meta: dict, n_frames: int) -> list[list]:
    """Per-item ``[kind, dtype, shape]`` of a ``list`` items meta, checked against the frames."""
    metas = meta.get("list") if isinstance(meta, dict) else None
    if not isinstance(metas, list):
        raise ProtocolError("items must be {'list': [...]} or {'stack': [dtype, shape]}")
    if len(metas) != n_frames:
        raise ProtocolError(f"items describe {len(metas)} items but {n_frames} frames came")
    return metas


def _buffer(frame: FrameLike) -> memoryview | bytes:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def _array(buf: Any, dtype: Any, shape: Any) -> np.ndarray:
    try:
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError("object dtype")
        return np.frombuffer(buf, dtype=dt).reshape(shape)
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"array item does not match dtype {dtype!r} shape {shape!r}: {err}") from err


def decode_items(meta: dict, frames: Sequence[FrameLike]) -> list[Item]:
    """Rebuild the items of a message from its items meta and payload frames.

    Arrays are read-only views on the received frames (no copy). Raises
    :class:`ProtocolError` when the meta and frames do not agree.
    """
    if isinstance(meta, dict) and "stack" in meta:
        try:
            dtype, shape = meta["stack"]
        except (TypeError, ValueError):
            raise ProtocolError("stack meta must be [dtype, shape]") from None
        if len(frames) != 1:
            raise ProtocolError(f"a stacked batch has one frame, got {len(frames)}")
        arr = _array(_buffer(frames[0]), dtype, shape)
        return list(arr)
    out: list[Item] = []
    for m, frame in zip(item_metas(meta, len(frames)), frames):
        if not isinstance(m, (list, tuple)) or len(m) != 3:
            raise ProtocolError("each item meta must be [kind, dtype, shape]")
        kind, dtype, shape = m
        buf = _buffer(frame)
        if kind == "a":
            out.append(_array(buf, dtype, shape))
        elif kind == "b":
            out.append(bytes(buf))
        elif kind == "s":
            try:
                out.append(bytes(buf).decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ProtocolError("string item is not valid UTF-8") from err
        else:
            raise ProtocolError(f"unknown item kind {kind!r}")
    return out
