"""The one wire protocol of Schooner: frontend <-> replicas and clients <-> frontend.

A message is a multipart ZeroMQ message: one small msgpack *header* frame, then
zero or more raw *payload* frames, one per array/bytes/string item. On a ROUTER
socket the peer identity frame comes first and is not part of the message.

Header keys common to every message: ``v`` (protocol version), ``type``
(:class:`MsgType`). The rest depends on the type: the ``*Header`` TypedDicts
say what each carries, and the builder functions (:func:`hello`, :func:`predict`,
:func:`reply`, ...) are the only code that writes a header, on every side.

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
import threading
from typing import Any, NotRequired, Sequence, TypedDict, Union

import msgpack
import numpy as np
import zmq

from schooner.defaults import MAX_ARRAY_DIMS, MAX_HEADER_BYTES, PROTOCOL_VERSION
from schooner.errors import ErrorCode, ProtocolError

Item = Union[np.ndarray, bytes, bytearray, memoryview, str]  # decoded items are arrays, bytes or str
FrameLike = Union[zmq.Frame, bytes, bytearray, memoryview, np.ndarray]


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


class HelloHeader(TypedDict):
    """HELLO: a replica registers (see :func:`hello`)."""

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


class _WelcomeBase(TypedDict):
    """WELCOME: the frontend registered a replica and tells it the heartbeat settings."""

    v: int
    type: str
    replica_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float


class WelcomeHeader(_WelcomeBase, total=False):
    """WELCOME, and the deployment's frontends when the frontend follows Redis."""

    frontends: list[str]  # replica addresses of every live frontend of the deployment
    frontend: str  # this frontend's own entry in ``frontends``


class HeartbeatHeader(TypedDict, total=False):
    """HEARTBEAT: liveness; a replica's sideband copy names its ``replica_id``."""

    v: int
    type: str
    replica_id: str
    sideband: bool  # from a replica's second socket: never answered, matched by replica_id
    frontends: list[str]  # from a frontend: replica addresses of every live frontend (as in WELCOME)


class PredictHeader(TypedDict):
    """PREDICT: a batch for a replica, one payload frame per item; RESULT answers with its batch_id."""

    v: int
    type: str
    batch_id: int
    model: str
    version: str
    items: dict


class ResultHeader(TypedDict):
    """RESULT: the outputs of a batch, in input order.

    ``service_us``: microseconds the batch cost at the replica, from when its
    PREDICT could have arrived (the link was last seen empty) to RESULT sent:
    the model's time plus any wait behind other frontends' batches. With it the
    frontend tells what a batch costs from its own delay in reading the RESULT.
    """

    v: int
    type: str
    batch_id: int
    items: dict
    service_us: NotRequired[int]


class QueryHeader(TypedDict):
    """QUERY: ``id`` is the client's request id, echoed in the REPLY or ERROR."""

    v: int
    type: str
    id: Any
    app: str
    items: dict


class ReplyHeader(TypedDict, total=False):
    """REPLY to a QUERY: outputs in input order, and whether they are defaults."""

    v: int
    type: str
    id: Any
    query_id: int
    items: dict
    default: bool  # true if any output is the app's default output
    defaults: list[bool]  # per output, only for a query that carried several inputs
    default_explanation: str  # only when some output is a default


class ErrorHeader(TypedDict, total=False):
    """ERROR: ``id`` (client request) or ``batch_id`` (replica batch), a code, a message."""

    v: int
    type: str
    id: Any
    batch_id: int
    code: str
    message: str
    retry_after_s: float  # only for ``overloaded``


_TYPES = frozenset(t.value for t in MsgType)


def _allowed_dtypes() -> dict[str, np.dtype]:
    # Numeric dtypes in little-endian or byte-order-free spellings ("<f4", "|u1", "float32", "f4").
    # Anything else is refused without numpy ever parsing it (a dtype string comes from a peer).
    out: dict[str, np.dtype] = {}
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64"):
        dt = np.dtype(name).newbyteorder("<")
        for spelling in (dt.str, name, dt.str[1:], "=" + dt.str[1:]):
            out[spelling] = dt
        if dt.itemsize == 1:
            out["|" + dt.str[1:]] = dt
    return out


ALLOWED_DTYPES = _allowed_dtypes()  # dtype string on the wire -> numpy dtype; nothing else is accepted
_tls = threading.local()
_unpackb = msgpack.unpackb


def _packb(obj: Any) -> bytes:
    """msgpack bytes of ``obj``; one Packer per thread (a Packer is not thread-safe)."""
    try:
        pack = _tls.pack
    except AttributeError:
        pack = _tls.pack = msgpack.Packer(use_bin_type=True).pack
    return pack(obj)


def _frames(to: Any, hdr: Any, payload: Sequence[FrameLike]) -> list[FrameLike]:
    frames: list[FrameLike] = [_packb(hdr)] if to is None else [to, _packb(hdr)]
    if payload:
        frames.extend(payload)
    return frames


def header(msg_type: MsgType, **fields: Any) -> dict:
    """A header dict for ``msg_type`` with the protocol version (tests and tools building odd messages)."""
    fields["v"] = PROTOCOL_VERSION
    fields["type"] = msg_type.value
    return fields


def pack(hdr: dict, payload: Sequence[FrameLike] = ()) -> list[FrameLike]:
    """Frames of one message: the msgpack header, then the payload frames as they are."""
    return [_packb(hdr), *payload]


# ---- builders: the only code that writes a header. ``to`` prefixes a ROUTER peer identity. ----

def hello(replica_id: str, model: str, version: str, input_type: str, input_shape: list[int] | None,
          pid: int, pidns: str, host: str, cpus: list[int], gpu: int | None) -> list[FrameLike]:
    """HELLO frames: a replica registers."""
    hdr: HelloHeader = {"v": PROTOCOL_VERSION, "type": "hello", "replica_id": replica_id, "model": model,
                        "version": version, "input_type": input_type, "input_shape": input_shape,
                        "pid": pid, "pidns": pidns, "host": host, "cpus": cpus, "gpu": gpu}
    return [_packb(hdr)]


def welcome(replica_id: str, heartbeat_interval_s: float, heartbeat_timeout_s: float,
            to: Any = None, frontends: Sequence[str] = (), frontend: str = "") -> list[FrameLike]:
    """WELCOME frames: the frontend's answer to HELLO (with the deployment's frontends, when known)."""
    hdr: WelcomeHeader = {"v": PROTOCOL_VERSION, "type": "welcome", "replica_id": replica_id,
                          "heartbeat_interval_s": heartbeat_interval_s,
                          "heartbeat_timeout_s": heartbeat_timeout_s}
    if frontends:
        hdr["frontends"] = list(frontends)
        hdr["frontend"] = frontend
    return _frames(to, hdr, ())


def heartbeat(replica_id: str | None = None, sideband: bool = False, to: Any = None,
              frontends: Sequence[str] = ()) -> list[FrameLike]:
    """HEARTBEAT frames (a replica names itself; its sideband socket says so; a frontend names its peers)."""
    hdr: HeartbeatHeader = {"v": PROTOCOL_VERSION, "type": "heartbeat"}
    if replica_id is not None:
        hdr["replica_id"] = replica_id
    if sideband:
        hdr["sideband"] = True
    if frontends:
        hdr["frontends"] = list(frontends)
    return _frames(to, hdr, ())


def bye(replica_id: str) -> list[FrameLike]:
    """BYE frames, sent on a replica's sideband socket: it is draining."""
    return [_packb({"v": PROTOCOL_VERSION, "type": "bye", "replica_id": replica_id, "sideband": True})]


def predict(batch_id: int, model: str, version: str, metas: list, payload: Sequence[FrameLike],
            to: Any = None) -> list[FrameLike]:
    """PREDICT frames: a batch of items (``metas`` as :func:`encode_items` writes a list) for a replica.

    A batch of arrays of one dtype and shape (the usual case) goes stacked, as one
    frame: the replica decodes one array instead of one per item, and neither side
    pays per-frame costs. When the batch is exactly one client's stacked frame,
    that frame is forwarded as it came (no copy).
    """
    items: dict = {"list": metas}
    if len(metas) > 1:
        stacked = _stack(metas, payload)
        if stacked is not None:
            items, payload = stacked
    hdr: PredictHeader = {"v": PROTOCOL_VERSION, "type": "predict", "batch_id": batch_id, "model": model,
                          "version": version, "items": items}
    return _frames(to, hdr, payload)


def _stack(metas: list, payload: Sequence[FrameLike]) -> tuple[dict, list[FrameLike]] | None:
    """(stack meta, [one frame]) for same-dtype, same-shape array items; None for any other batch."""
    first = metas[0]
    if first[0] != "a":
        return None
    for meta in metas:
        if meta is not first and meta != first:
            return None
    meta = {"stack": [first[1], [len(metas), *first[2]]]}
    head = payload[0]
    source = head.obj if isinstance(head, memoryview) else None
    if isinstance(source, zmq.Frame):
        total = 0
        for view in payload:
            if view.__class__ is not memoryview or view.obj is not source:
                break
            total += view.nbytes
        else:
            # Distinct slices covering the frame are all of its items, in order (the dispatcher keeps
            # a query's items in order): forward the frame whole.
            if total == len(source) and len({id(view) for view in payload}) == len(payload):
                return meta, [source]
    return meta, [b"".join(payload)]  # type: ignore[arg-type]  # zmq.Frame is a buffer too


def result(batch_id: int, items: dict, payload: Sequence[FrameLike],
           service_s: float | None = None) -> list[FrameLike]:
    """RESULT frames: a batch's outputs (``items`` from :func:`encode_items`), and its service time."""
    hdr: ResultHeader = {"v": PROTOCOL_VERSION, "type": "result", "batch_id": batch_id, "items": items}
    if service_s is not None:
        hdr["service_us"] = max(0, int(service_s * 1e6))
    return _frames(None, hdr, payload)


def query(request_id: Any, app: str, items: dict, payload: Sequence[FrameLike]) -> list[FrameLike]:
    """QUERY frames: a client's input(s) for ``app``."""
    hdr: QueryHeader = {"v": PROTOCOL_VERSION, "type": "query", "id": request_id, "app": app, "items": items}
    return _frames(None, hdr, payload)


def reply(request_id: Any, query_id: int, metas: list, payload: Sequence[FrameLike], n_defaults: int,
          defaults: list[bool] | None = None, explanation: str = "", to: Any = None) -> list[FrameLike]:
    """REPLY frames: a query's outputs; ``defaults`` (per output) only for a multi-input query."""
    hdr: ReplyHeader = {"v": PROTOCOL_VERSION, "type": "reply", "id": request_id, "query_id": query_id,
                        "items": {"list": metas}, "default": n_defaults > 0}
    if defaults is not None:
        hdr["defaults"] = defaults
    if n_defaults:
        hdr["default_explanation"] = explanation
    return _frames(to, hdr, payload)


def error(code: ErrorCode, message: str, id: Any = None, batch_id: int | None = None,  # noqa: A002
          retry_after_s: float | None = None, to: Any = None) -> list[FrameLike]:
    """ERROR frames: ``id`` answers a client request, ``batch_id`` a replica batch."""
    hdr: ErrorHeader = {"v": PROTOCOL_VERSION, "type": "error", "code": code.value, "message": message}
    if id is not None:
        hdr["id"] = id
    if batch_id is not None:
        hdr["batch_id"] = batch_id
    if retry_after_s is not None:
        hdr["retry_after_s"] = retry_after_s
    return _frames(to, hdr, ())


# ---- parsing --------------------------------------------------------------------------------

def unpack(frames: Sequence[FrameLike]) -> tuple[dict, list[FrameLike]]:
    """Split a received message into (header, payload frames).

    Raises :class:`ProtocolError` for an empty message, a header that is not a
    msgpack map, a missing/unknown type, or another protocol version.
    """
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    size = len(raw) if not isinstance(raw, memoryview) else raw.nbytes
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {size} bytes is larger than the limit of {MAX_HEADER_BYTES}")
    try:
        hdr = _unpackb(raw)  # a zmq.Frame is a buffer itself: faster than its .buffer view
    except Exception as err:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {err}") from err
    if not isinstance(hdr, dict):
        raise ProtocolError("header must be a msgpack map")
    version = hdr.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {short(version)} is not supported (expected {PROTOCOL_VERSION})")
    kind = hdr.get("type")
    if kind.__class__ is not str or kind not in _TYPES:
        raise ProtocolError(f"unknown message type {short(kind)}")
    return hdr, list(frames[1:])


def request_id(frame: FrameLike) -> Any:
    """The ``id`` of a message's header frame, None when it has none (to address an error reply)."""
    try:
        hdr = _unpackb(frame)
    except Exception:  # only used to address an error reply
        return None
    return hdr.get("id") if isinstance(hdr, dict) else None


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


def item_metas(meta: Any, n_frames: int) -> list[list]:
    """Per-item ``[kind, dtype, shape]`` of a ``list`` items meta, checked against the frames."""
    metas = meta.get("list") if isinstance(meta, dict) else None
    if not isinstance(metas, list):
        raise ProtocolError("items must be {'list': [...]} or {'stack': [dtype, shape]}")
    if len(metas) != n_frames:
        raise ProtocolError(f"items describe {len(metas)} items but {n_frames} frames came")
    return metas


def _buffer(frame: FrameLike) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: peer-supplied values in error messages and logs."""
    text = repr(value) if not isinstance(value, (bytes, str)) or len(value) <= 4 * limit else repr(value[:limit])
    return text if len(text) <= limit else text[:limit] + "..."


def parse_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype a wire dtype string names; ProtocolError unless it is in :data:`ALLOWED_DTYPES`."""
    dt = ALLOWED_DTYPES.get(dtype) if dtype.__class__ is str else None
    if dt is None:
        raise ProtocolError(f"dtype {short(dtype)} is not allowed (numeric little-endian dtypes only, e.g. '<f4')")
    return dt


def check_shape(shape: Any) -> int:
    """Elements of ``shape`` (a list of sizes, at most MAX_ARRAY_DIMS); ProtocolError otherwise."""
    if shape.__class__ is not list or len(shape) > MAX_ARRAY_DIMS:
        raise ProtocolError(f"shape must be a list of at most {MAX_ARRAY_DIMS} sizes")
    n = 1
    for d in shape:
        if d.__class__ is not int or d < 0:
            raise ProtocolError(f"shape must be a list of sizes >= 0, got {short(shape)}")
        n *= d
    return n


def _array(buf: Any, dtype: Any, shape: Any) -> np.ndarray:
    # Checked before numpy sees them: an allowed dtype, and exactly the bytes the shape needs.
    dt = parse_dtype(dtype)
    size = check_shape(shape) * dt.itemsize
    have = buf.nbytes if isinstance(buf, memoryview) else len(buf)
    if size != have:
        raise ProtocolError(f"array item of dtype {dt.str} shape {shape} needs {size} bytes, the frame has {have}")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def decode_items(meta: Any, frames: Sequence[FrameLike]) -> list[Item]:
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
        if shape.__class__ is not list or not shape:
            raise ProtocolError("a stacked batch's shape needs at least one axis")
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
            raise ProtocolError(f"unknown item kind {short(kind)}")
    return out
