"""ZMQ client queries in, replies out: the client ROUTER's burst handler."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from schooner import protocol
from frontend.admission import nbytes, split_items, validate_items
from frontend.config import FrontendConfig
from frontend.dispatch import Dispatcher
from frontend.looplag import LoopLag
from schooner.errors import BadInput, NoModel, NotReady, Overloaded, ProtocolError, SchoonerError, UnknownApp
from schooner.protocol import ErrorCode, MsgType, short
from frontend.badmsg import BadMessages
from frontend.queries import Query
from frontend.zmq_endpoints import RouterEndpoint

log = logging.getLogger(__name__)


def error_frames(err: SchoonerError, request_id: Any, to: Any, retry_after_s: float | None = None) -> list:
    """Frames of an ERROR reply for ``err`` to peer ``to`` (an unknown code travels as ``internal``)."""
    try:
        code = ErrorCode(err.code)
    except ValueError:
        code = ErrorCode.INTERNAL
    return protocol.error(code, str(err), id=request_id, retry_after_s=retry_after_s, to=to)


class ClientIngress:
    """Parses and validates QUERY messages, submits them, and sends each REPLY or ERROR."""

    def __init__(self, dispatcher: Dispatcher, config: FrontendConfig, send: Callable[[list], None],
                 lag: LoopLag | None = None) -> None:
        self.dispatcher = dispatcher
        self.config = config
        self.send = send
        self.bad = BadMessages("client", dispatcher.metrics, log)
        self.lag = lag if lag is not None else LoopLag()
        self.endpoint: RouterEndpoint | None = None  # the client socket, once bound: when it was last empty

    def on_burst(self, burst: list[list[Any]]) -> None:
        """Handle a burst of client messages, then dispatch the queues they filled.

        Each message on its own: whatever one raises is answered (or counted)
        for that message alone and never costs another of the burst.
        """
        now = time.monotonic()
        waited = self._waited(now)
        for frames in burst:
            try:
                self._handle(frames, now, waited)
            except (Overloaded, NotReady) as err:
                self.send(error_frames(err, self._id_of(frames), frames[0], err.retry_after_s))
            except (ProtocolError, BadInput) as err:
                self.bad.note(logging.INFO, "client %r sent a bad message: %s", frames[0].bytes, err)
                self.send(error_frames(err, self._id_of(frames), frames[0]))
            except SchoonerError as err:
                log.debug("query rejected: %s", err)
                self.send(error_frames(err, self._id_of(frames), frames[0]))
            except Exception as err:  # a bug met by one message: answer it, keep the rest of the burst
                self.bad.note(logging.ERROR, "client %r: message handling failed: %r", frames[0].bytes, err)
                self.send(error_frames(SchoonerError(f"internal error: {type(err).__name__}"),
                                       self._id_of(frames), frames[0]))
        self.dispatcher.pump_dirty()

    def _waited(self, now: float) -> float:
        """How long the queries of the burst read at ``now`` likely waited in the socket (at most).

        Each came after the drain before found the socket empty (``burst_since``), and the loop's
        lag (:class:`LoopLag`) bounds it too: the loop may have sat idle since, reading each query
        as it came. The whole burst is given that wait, as HTTP's requests are: queries a client sent
        together while the loop was busy waited alike, and guessing the later ones shorter would
        admit them late. Without this a frontend offered more than it reads stamped each query
        when it got to it, admitted queries already late for their clients (its socket buffers
        up to ``SNDHWM`` messages a peer), and every answer came late.
        """
        lag = self.lag.waited(now)  # asked for every burst: the timer runs while queries come
        endpoint = self.endpoint
        return 0.0 if endpoint is None else min(now - endpoint.burst_since, lag)

    @staticmethod
    def _id_of(frames: list) -> Any:
        return protocol.request_id(frames[1]) if len(frames) > 1 else None

    def _handle(self, frames: list, now: float, waited: float) -> None:
        total = 0
        for frame in frames[1:]:
            total += nbytes(frame)
        if total > self.config.max_message_bytes:
            raise BadInput(f"message of {total} bytes is larger than the limit of {self.config.max_message_bytes}")
        hdr, payload = protocol.unpack(frames[1:])  # ProtocolError names what is wrong
        if hdr["type"] != "query":
            self._not_a_query(frames[0], hdr)
            return
        request_id = hdr.get("id")
        if not self.dispatcher.ready:
            raise NotReady("the frontend has not loaded its apps and models yet", self.config.retry_after_s)
        app = hdr.get("app")
        route = self.dispatcher.routes.get(app) if app.__class__ is str else None
        if route is None:
            raise UnknownApp(f"no app named {short(app)}")
        mq = route.queue
        if mq is None:
            raise NoModel(route.problem)
        metas, payload = split_items(hdr.get("items"), payload, self.config.max_items_per_query)
        if not metas:
            raise BadInput("query has no items")
        if route.app.spec.on_overload == "reject" and route.app.behind(waited, now):
            raise self.dispatcher.refuse_behind(route, len(metas), waited, "read")
        validate_items(metas, payload, mq.spec.input_type, mq.input_shape, self.config.max_input_bytes)
        # It arrived when it came, not when it was read: admission counts the wait against its objective
        # (an app that answers overload with its default output gets it there).
        query = Query(self.dispatcher.next_query_id(), route.app, len(metas), now - waited, self._reply)
        query.client_id = request_id
        query.peer = frames[0]
        self.dispatcher.submit(route, query, metas, payload, now)

    def _not_a_query(self, peer: Any, hdr: dict) -> None:
        if hdr["type"] == MsgType.HEARTBEAT.value:
            self.send(protocol.heartbeat(to=peer))
            return
        raise ProtocolError(f"clients may send only query or heartbeat messages, not {short(hdr['type'])}")

    def _reply(self, query: Query, err: SchoonerError | None) -> None:
        self.dispatcher.record(query, err)
        if err is not None:
            self.send(error_frames(err, query.client_id, query.peer))
            return
        self.send(protocol.reply(query.client_id, query.query_id, query.metas, query.frames, query.n_defaults,
                                 query.defaults if query.n > 1 else None, query.explanation, to=query.peer))
