"""Client library: send queries to the frontend's ZMQ client port.

:class:`Client` is blocking, :class:`AsyncClient` its asyncio twin; both speak
the wire protocol of :mod:`schooner.protocol` over one DEALER socket. Numpy
inputs travel zero-copy; lists are converted to the app's dtype (``dtype``:
an :class:`~schooner.types.InputType` name or a numpy dtype; without one,
integers become int32 and other numbers float32). An ERROR reply raises the
named error of :mod:`schooner.errors`; no reply within ``timeout_s`` raises
:class:`~schooner.errors.QueryTimeout` (a :class:`TimeoutError`).

Several frontends: ``address`` may name several (a list, or one string joined
by commas), or :meth:`Client.from_redis` reads them from Redis's frontend
directory. :class:`Client` sends each query to the next connected frontend and,
when one disconnects, sends its unanswered queries again on another (see
:mod:`frontend.failover`). :class:`AsyncClient` spreads its queries over the
connected frontends; a query in the hands of a frontend that dies times out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import zmq
import zmq.asyncio

from schooner import curve, defaults, protocol
from schooner.urls import redact
from schooner.errors import BadInput, Overloaded, ProtocolError, QueryTimeout, SchoonerError, from_code
from schooner.protocol import MsgType
from schooner.transport import send_frames
from schooner.types import InputType
from frontend.failover import HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS, FrontendLinks, split_addresses

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = f"tcp://{defaults.HOST}:{defaults.CLIENT_PORT}"
DTypeLike = Union[InputType, str, np.dtype, type, None]


@dataclass
class Prediction:
    """One output: the frontend's query id, the output, whether it is the app's default, latency."""

    query_id: int | None
    output: Any
    default: bool
    default_explanation: str | None
    latency_s: float  # measured by the client: send to reply


def _dtype(dtype: DTypeLike) -> np.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, InputType) or (isinstance(dtype, str) and dtype in InputType._value2member_map_):
        return InputType.parse(dtype).dtype
    try:
        return np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be an input type name or a numpy dtype, got {dtype!r}") from err


def _pick(dtype: DTypeLike, fallback: np.dtype | None) -> np.dtype | None:
    # Not ``or``: a plain numpy dtype is falsy (it has no fields).
    return fallback if dtype is None else _dtype(dtype)


def _item(value: Any, dtype: np.dtype | None) -> protocol.Item:
    """One input as the protocol sends it."""
    if isinstance(value, np.ndarray):
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return value
    arr = np.asarray(value, dtype=dtype)
    if dtype is None:
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.int32)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        else:
            raise TypeError(f"cannot send an input of type {type(value).__name__}")
    return arr


_LIST_DTYPES = {"i": (np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.float64)),
                "f": (np.dtype(np.float32), np.dtype(np.float64))}


def _list_candidates(values: Any) -> tuple[np.dtype, ...]:
    """The dtypes a list (or a list of lists) of numbers may be meant as, the client's default first;
    empty for arrays, strings and bytes, which go as they are."""
    if isinstance(values, (np.ndarray, bytes, bytearray, memoryview, str)) or not isinstance(values, (list, tuple)):
        return ()
    try:
        kind = np.asarray(values).dtype.kind
    except ValueError:
        return ()
    return _LIST_DTYPES.get("i" if kind in "iub" else kind, ())


def _encode_one(value: Any, dtype: np.dtype | None) -> tuple[dict, list]:
    item = _item(value, dtype)
    if isinstance(item, np.ndarray) and item.ndim > 0:
        return protocol.encode_items(item[np.newaxis])  # one zero-copy frame
    return protocol.encode_items([item])


def _encode_many(values: Any, dtype: np.dtype | None) -> tuple[dict, list]:
    if isinstance(values, np.ndarray):
        arr = values if dtype is None or values.dtype == dtype else values.astype(dtype)
        return protocol.encode_items(arr)
    return protocol.encode_items([_item(v, dtype) for v in values])


def _query(app: str, qid: int, meta: dict, frames: list) -> list:
    return protocol.query(qid, app, meta, frames)


def _raise_error(hdr: dict) -> None:
    if hdr["type"] == MsgType.ERROR.value:
        err = from_code(str(hdr.get("code")), str(hdr.get("message", "")))
        if isinstance(err, Overloaded) and isinstance(hdr.get("retry_after_s"), (int, float)):
            err.retry_after_s = float(hdr["retry_after_s"])
        raise err
    if hdr["type"] != MsgType.REPLY.value:
        raise ProtocolError(f"expected a reply, got {hdr['type']!r}")


def _predictions(hdr: dict, payload: list, latency_s: float, expected: int) -> list[Prediction]:
    """Predictions of a REPLY (or raise the error of an ERROR)."""
    _raise_error(hdr)
    outputs = protocol.decode_items(hdr.get("items"), payload)
    if len(outputs) != expected:
        raise ProtocolError(f"reply holds {len(outputs)} outputs for {expected} inputs")
    flags = hdr.get("defaults")
    if not isinstance(flags, list) or len(flags) != expected:
        flags = [bool(hdr.get("default", False))] * expected
    explanation = hdr.get("default_explanation")
    qid = hdr.get("query_id")
    return [Prediction(qid, out, bool(flag), explanation if flag else None, latency_s)
            for out, flag in zip(outputs, flags)]


def _check_args(timeout_s: float, concurrency: int = 1) -> None:
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")


def _announced(redis_url: str, prefix: str) -> list[str]:
    """Client addresses of the frontends announced in Redis."""
    import redis  # noqa: PLC0415 - only this way of finding frontends needs it

    from management.store import FrontendDirectory  # noqa: PLC0415

    conn = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        addresses = FrontendDirectory(conn, prefix=prefix).addresses("client")
    finally:
        conn.close()
    if not addresses:
        raise ValueError(f"no frontend is announced in the Redis at {redact(redis_url)}")
    return addresses


class Client:
    """Blocking client over one DEALER socket per frontend; not thread-safe (one per thread: headers are
    packed per thread)."""

    @classmethod
    def from_redis(cls, redis_url: str, prefix: str = defaults.REDIS_KEY_PREFIX, **kwargs: Any) -> Client:
        """A client of every frontend announced in the Redis at ``redis_url`` (as they are now)."""
        return cls(_announced(redis_url, prefix), **kwargs)

    def __init__(self, address: str | Sequence[str] = DEFAULT_ADDRESS, timeout_s: float = 30.0,
                 ctx: zmq.Context | None = None, input_type: DTypeLike = None,
                 spin_us: int = defaults.CLIENT_SPIN_US, server_key: str = "") -> None:
        _check_args(timeout_s)
        if not isinstance(spin_us, int) or spin_us < 0:
            raise ValueError(f"spin_us must be an integer >= 0, got {spin_us!r}")
        self.addresses = split_addresses(address)
        self.address = ",".join(self.addresses)
        self.timeout_s = float(timeout_s)
        self.spin_ns = spin_us * 1000  # poll without blocking this long before sleeping on a reply
        self._dtype = _dtype(input_type)
        # What each app took lists of integers / of floats as (learnt, see _learn).
        self._app_dtypes: dict[tuple[str, str], np.dtype] = {}
        self._own_ctx = ctx is None
        self._ctx = zmq.Context() if ctx is None else ctx
        # server_key: the frontend's public CURVE key, for a frontend whose client port requires CURVE.
        self._links = FrontendLinks(self._ctx, self.addresses, server_key)
        self._sent: dict[int, tuple[int, list]] = {}  # several frontends: query id -> (link, frames)
        self.resent = 0  # queries sent again because their frontend disconnected
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (and the context if this client made it)."""
        if not self._links.socks[0].closed:
            self._links.close()
            if self._own_ctx:
                self._ctx.term()

    def _send(self, app: str, meta: dict, frames: list) -> int:
        qid = next(self._ids)
        msg = _query(app, qid, meta, frames)
        i = self._links.pick()
        send_frames(self._links.socks[i], msg, noblock=False)
        if self._links.many:
            self._sent[qid] = (i, msg)
        return qid

    def _fail_over(self, down: int) -> None:
        """Send the unanswered queries of link ``down`` again on another link."""
        moved = [qid for qid, (i, _) in self._sent.items() if i == down]
        for qid in moved:
            msg = self._sent[qid][1]
            j = self._links.other_than(down)
            send_frames(self._links.socks[j], msg, noblock=False)
            self._sent[qid] = (j, msg)
        if moved:
            self.resent += len(moved)
            log.warning("sent %d unanswered queries of %s again", len(moved), self._links.addresses[down])

    def _recv(self, deadline: float) -> tuple[dict, list] | None:
        """The next well-formed message, or None at the deadline."""
        if self.spin_ns:
            until = time.monotonic_ns() + self.spin_ns
            while time.monotonic_ns() < until:
                msg = self._recv_nowait()
                if msg is not None:
                    return msg
                os.sched_yield()  # lets the ZMQ I/O thread (or a frontend on this core) run now
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                return None
            readable, went_down = self._links.poll(remaining_ms)
            for i in went_down:
                self._fail_over(i)
            if readable:
                msg = self._recv_nowait()
                if msg is not None:
                    return msg

    def _wait(self, qid: int, started: float) -> tuple[dict, list, float]:
        deadline = started + self.timeout_s
        while True:
            msg = self._recv(deadline)
            if msg is None:
                self._sent.pop(qid, None)
                raise QueryTimeout(f"no reply to query {qid} within {self.timeout_s} s")
            if msg[0].get("id") == qid:
                return msg[0], msg[1], time.monotonic() - started
            log.debug("dropping a late reply to query %s", msg[0].get("id"))

    def predict(self, app: str, input: Any, dtype: DTypeLike = None) -> Prediction:
        """Query ``app`` with one input; the output or a named error.

        A list (not an array) goes as the app's input type: without ``dtype`` the
        client tries int32/float32/float64 in turn on the app's first list and
        remembers the one it took.
        """
        return self._learn(app, input, dtype, lambda dt: self._one(app, input, dt))[0]

    def _one(self, app: str, input: Any, dt: np.dtype | None) -> list[Prediction]:
        meta, frames = _encode_one(input, dt)
        started = time.monotonic()
        hdr, payload, latency = self._wait(self._send(app, meta, frames), started)
        return _predictions(hdr, payload, latency, 1)

    def predict_batch(self, app: str, inputs: Sequence[Any] | np.ndarray,
                      dtype: DTypeLike = None) -> list[Prediction]:
        """Query ``app`` with several inputs in one message; outputs in input order (lists as in predict)."""
        def batch(dt: np.dtype | None) -> list[Prediction]:
            meta, frames = _encode_many(inputs, dt)
            started = time.monotonic()
            hdr, payload, latency = self._wait(self._send(app, meta, frames), started)
            return _predictions(hdr, payload, latency, len(inputs))

        probe = inputs[0] if not isinstance(inputs, np.ndarray) and len(inputs) else inputs
        return self._learn(app, probe, dtype, batch)

    def _learn(self, app: str, probe: Any, dtype: DTypeLike, send: Callable[[np.dtype | None], Any]) -> Any:
        """``send(dtype)`` with the dtype the caller, the client or the app (learnt) gives a list input."""
        chosen = _pick(dtype, self._dtype)
        candidates = _list_candidates(probe) if chosen is None else ()
        if not candidates:
            return send(chosen)
        key = (app, candidates[0].kind)
        known = self._app_dtypes.get(key)
        if known is not None:
            return send(known)
        first: BadInput | None = None
        for candidate in candidates:
            try:
                out = send(candidate)
            except BadInput as err:
                first = first or err
                continue  # the app may take another type: try the next
            self._app_dtypes[key] = candidate
            return out
        assert first is not None
        raise first  # no type fits: the error of the client's own default says why

    def _list_dtype(self, app: str, inputs: Sequence[Any], dtype: DTypeLike) -> np.dtype | None:
        chosen = _pick(dtype, self._dtype)
        candidates = _list_candidates(inputs[0]) if chosen is None and len(inputs) else ()
        return self._app_dtypes.get((app, candidates[0].kind)) if candidates else chosen

    def predict_many(self, app: str, inputs: Sequence[Any], concurrency: int = 64,
                     dtype: DTypeLike = None) -> list[Prediction | SchoonerError]:
        """One query per input, ``concurrency`` in flight; a Prediction or the error, in input order."""
        _check_args(self.timeout_s, concurrency)
        results: list[Prediction | SchoonerError | None] = [None] * len(inputs)
        next_index = 0
        if len(inputs) and self._list_dtype(app, inputs, dtype) is None and _list_candidates(inputs[0]):
            try:  # the app's first list: learn its type on one query before pipelining the rest
                results[0] = self.predict(app, inputs[0])
            except SchoonerError as err:
                results[0] = err
            next_index = 1
        dt = self._list_dtype(app, inputs, dtype)
        inflight: dict[int, tuple[int, float]] = {}  # query id -> (input index, sent at)
        while next_index < len(inputs) or inflight:
            while next_index < len(inputs) and len(inflight) < concurrency:
                meta, frames = _encode_one(inputs[next_index], dt)
                inflight[self._send(app, meta, frames)] = (next_index, time.monotonic())
                next_index += 1
            oldest = next(iter(inflight.values()))[1]  # dicts keep send order
            msg = self._recv(oldest + self.timeout_s)
            if msg is None:
                self._expire(inflight, results)
                continue
            while msg is not None:  # take every reply already here before sending more
                self._settle(msg, inflight, results)
                msg = self._recv_nowait()
        return results  # type: ignore[return-value]

    def _recv_nowait(self) -> tuple[dict, list] | None:
        """A message already here (malformed ones are logged and skipped), else None."""
        while True:
            got = self._links.recv_nowait()
            if got is None:
                return None
            try:
                msg = protocol.unpack(got[1])
            except ProtocolError as err:
                log.warning("malformed message from the frontend: %s", err)
                continue
            if self._sent:
                self._sent.pop(msg[0].get("id"), None)  # type: ignore[arg-type]
            return msg

    @staticmethod
    def _settle(msg: tuple[dict, list], inflight: dict[int, tuple[int, float]], results: list) -> None:
        hdr, payload = msg
        entry = inflight.pop(hdr.get("id"), None)  # type: ignore[arg-type]
        if entry is None:
            log.debug("dropping a late reply to query %s", hdr.get("id"))
            return
        index, sent = entry
        try:
            results[index] = _predictions(hdr, payload, time.monotonic() - sent, 1)[0]
        except SchoonerError as err:
            results[index] = err

    def _expire(self, inflight: dict[int, tuple[int, float]], results: list) -> None:
        now = time.monotonic()
        for qid, (index, sent) in list(inflight.items()):
            if now - sent >= self.timeout_s:
                del inflight[qid]
                self._sent.pop(qid, None)
                results[index] = QueryTimeout(f"no reply to query {qid} within {self.timeout_s} s")


class AsyncClient:
    """asyncio client: one DEALER socket (to every frontend named), one reader task handing replies to
    futures by id."""

    @classmethod
    def from_redis(cls, redis_url: str, prefix: str = defaults.REDIS_KEY_PREFIX, **kwargs: Any) -> AsyncClient:
        """A client of every frontend announced in the Redis at ``redis_url`` (as they are now)."""
        return cls(_announced(redis_url, prefix), **kwargs)

    def __init__(self, address: str | Sequence[str] = DEFAULT_ADDRESS, timeout_s: float = 30.0,
                 ctx: zmq.Context | None = None, input_type: DTypeLike = None, server_key: str = "") -> None:
        _check_args(timeout_s)
        self.addresses = split_addresses(address)
        self.address = ",".join(self.addresses)
        self.timeout_s = float(timeout_s)
        self._dtype = _dtype(input_type)
        # What each app took lists of integers / of floats as (learnt, see _learn).
        self._app_dtypes: dict[tuple[str, str], np.dtype] = {}
        self._own_ctx = ctx is None
        if ctx is None:
            self._ctx: zmq.asyncio.Context = zmq.asyncio.Context()
        elif isinstance(ctx, zmq.asyncio.Context):
            self._ctx = ctx
        else:
            self._ctx = zmq.asyncio.Context.shadow(ctx)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if server_key:  # a CURVE client port: see Client
            curve.client_socket(self._sock, curve.KeyPair.generate(), server_key)
        if len(self.addresses) > 1:
            # DEALER sends round-robin over connected peers only (IMMEDIATE); heartbeats notice a
            # frontend whose host vanished.
            self._sock.setsockopt(zmq.IMMEDIATE, 1)
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        for address in self.addresses:
            self._sock.connect(address)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the reader, fail pending queries, close the socket (and own context)."""
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        self._fail_pending(QueryTimeout("client closed"))
        if not self._sock.closed:
            self._sock.close(linger=0)
            if self._own_ctx:
                self._ctx.term()

    def _fail_pending(self, err: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()

    async def _read(self) -> None:
        try:
            while True:
                frames = await self._sock.recv_multipart(copy=False)
                try:
                    hdr, payload = protocol.unpack(frames)
                except ProtocolError as err:
                    log.warning("malformed message from the frontend: %s", err)
                    continue
                fut = self._pending.pop(hdr.get("id"), None)  # type: ignore[arg-type]
                if fut is None or fut.done():
                    log.debug("dropping a late reply to query %s", hdr.get("id"))
                    continue
                fut.set_result((hdr, payload, time.monotonic()))
        except zmq.ZMQError as err:
            self._fail_pending(SchoonerError(f"client socket failed: {err}"))

    async def _request(self, app: str, meta: dict, frames: list) -> tuple[dict, list, float]:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        qid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[qid] = fut
        started = time.monotonic()
        try:
            await self._sock.send_multipart(_query(app, qid, meta, frames), copy=False)
            hdr, payload, done = await asyncio.wait_for(fut, self.timeout_s)
        except asyncio.TimeoutError:
            raise QueryTimeout(f"no reply to query {qid} within {self.timeout_s} s") from None
        finally:
            self._pending.pop(qid, None)
        return hdr, payload, done - started

    async def predict(self, app: str, input: Any, dtype: DTypeLike = None) -> Prediction:
        """Query ``app`` with one input; the output or a named error."""
        meta, frames = _encode_one(input, _pick(dtype, self._dtype))
        hdr, payload, latency = await self._request(app, meta, frames)
        return _predictions(hdr, payload, latency, 1)[0]

    async def predict_batch(self, app: str, inputs: Sequence[Any] | np.ndarray,
                            dtype: DTypeLike = None) -> list[Prediction]:
        """Query ``app`` with several inputs in one message; outputs in input order."""
        meta, frames = _encode_many(inputs, _pick(dtype, self._dtype))
        hdr, payload, latency = await self._request(app, meta, frames)
        return _predictions(hdr, payload, latency, len(inputs))

    async def predict_many(self, app: str, inputs: Sequence[Any], concurrency: int = 64,
                           dtype: DTypeLike = None) -> list[Prediction | SchoonerError]:
        """One query per input, at most ``concurrency`` in flight; Predictions or errors, in input order."""
        _check_args(self.timeout_s, concurrency)
        dt = _pick(dtype, self._dtype)
        results: list[Prediction | SchoonerError | None] = [None] * len(inputs)
        indices = iter(range(len(inputs)))

        async def lane() -> None:
            for i in indices:  # shared iterator: each index is taken by one lane
                try:
                    results[i] = await self.predict(app, inputs[i], dt)
                except SchoonerError as err:
                    results[i] = err

        await asyncio.gather(*(lane() for _ in range(min(concurrency, len(inputs)))))
        return results  # type: ignore[return-value]
