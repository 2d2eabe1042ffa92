"""The frontend's HTTP/1.1 server: httptools' parser (llhttp) on an asyncio Protocol.

Why not aiohttp's server: a W1 query (32 doubles to a noop model) cost the
frontend ~320 µs of CPU, and a py-spy profile put aiohttp's request and
response machinery (the web protocol, Request and Response objects, the
router, the writer, signals) well above Schooner's own work on the query.
Here a request is parsed by llhttp in C, routed by one dict lookup, and
answered with one ``transport.write``; predict needs no task or future: its
query calls :meth:`Request.reply` when it completes.

What a client can count on:

- HTTP/1.1 keep-alive (and HTTP/1.0 with ``Connection: keep-alive``);
  pipelined requests are answered in order, one at a time per connection;
- bodies by ``Content-Length`` or chunked, at most ``max_body_bytes``, refused
  at the headers when the length says so (400 ``bad_input`` naming
  ``max_message_bytes``; also after ``Expect: 100-continue``, which is answered); limits on the URL and the headers (414, 431);
- an ``Upgrade`` is ignored: the request is answered, then the connection closes;
- a malformed request gets a 400 with a JSON error body and the connection is
  closed (a lingering close: what the client still sends is read and dropped, so
  that it reads the answer); unknown paths 404, a known path with another method 405 + ``Allow``;
- an idle keep-alive connection is closed after ``keepalive_s``, a request not
  received whole within ``request_timeout_s`` of its first byte gets 408;
- a client that stops reading its answers stops being read (write
  backpressure), and more than ``MAX_PIPELINED`` waiting requests pause reading;
- a route may check a request at its headers (``early``), before its body is
  kept: given how long the request has likely waited for the server to read
  it (:meth:`frontend.looplag.LoopLag.waited`), it may answer at once, and the body is then
  read and dropped, not buffered or parsed. The frontend refuses predictions
  so when the loop is too far behind for them to make their objective.

Every answer carries ``Date`` and the :data:`schooner.cli.PID_HEADER`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Union

import httptools
import orjson

from frontend.looplag import LoopLag
from schooner.cli import PID_HEADER
from schooner.errors import ErrorCode, error_body

log = logging.getLogger(__name__)

MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 65536  # all header lines of one request together
MAX_HEADERS = 100
MAX_PIPELINED = 32  # parsed requests waiting behind the one being answered before reading pauses
KEEPALIVE_S = 75.0  # aiohttp's default
REQUEST_TIMEOUT_S = 60.0  # from a request's first byte to its last
LINGER_S = 5.0  # reading and dropping what a refused client still sends, before closing
TICK_S = 1.0  # the Date header's resolution and the timeouts' granularity

_REASONS = {200: "OK", 100: "Continue", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n".encode()
    return line


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch_s: float) -> str:
    """RFC 9110's IMF-fixdate (``Thu, 03 Dec 2026 05:41:12 GMT``), without email.utils or the locale."""
    t = time.gmtime(epoch_s)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class Response:
    """A whole answer: status, body bytes and headers beyond Content-Type, Content-Length and Date."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                 content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error answer in Schooner's error body."""
    return Response(orjson.dumps(error_body(code, message)), status=status, headers=headers)


class Request:
    """One parsed request. ``params`` holds a route's ``{name}`` segments (percent-decoded)."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "params", "keep_alive", "conn", "waited_s",
                 "arrived", "route")

    def __init__(self, conn: Connection, method: str, target: bytes, headers: dict[str, str], body: bytes,
                 keep_alive: bool) -> None:
        self.conn, self.method, self.headers, self.body, self.keep_alive = conn, method, headers, body, keep_alive
        path, _, query = target.partition(b"?")
        self.path = path.decode("latin-1")
        self.query_string = query.decode("latin-1")
        self.params: dict[str, str] = {}
        self.waited_s = 0.0  # for a route with an early check: how long it likely waited to be read
        self.arrived = 0.0  # and when it came: read at the headers, less that wait (0.0: not known)
        self.route: Any = None  # its handler, or the answer it gets (set at the headers)

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the first value of each)."""
        out: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    def reply(self, response: Response) -> None:
        """Answer this request (once); a request whose connection is gone is dropped."""
        self.conn.answer(self, response)


# A handler answers with a Response, with an awaitable of one (run as a task), or with None when it
# calls ``request.reply`` itself later.
Handler = Callable[[Request], Union[Response, Awaitable[Union[Response, None]], None]]
# A route's check at the headers (the body not read yet): an answer to give at once, or None.
Early = Callable[[Request], Union[Response, None]]


class Router:
    """Routes by exact path, or by a pattern of literal and ``{name}`` segments, then by method."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.patterns: list[tuple[tuple[str, ...], dict[str, Handler]]] = []
        self.early: dict[Handler, Early] = {}

    def add(self, method: str, path: str, handler: Handler, early: Early | None = None) -> None:
        """Route ``method path`` (``/{app}/predict`` style patterns allowed) to ``handler``; ``early``
        sees the request at its headers (:data:`Early`), with ``waited_s`` set."""
        if early is not None:
            self.early[handler] = early
        segments = tuple(path.split("/"))
        if any(s.startswith("{") for s in segments):
            for pattern, methods in self.patterns:
                if pattern == segments:
                    methods[method] = handler
                    return
            self.patterns.append((segments, {method: handler}))
        else:
            self.exact.setdefault(path, {})[method] = handler

    def resolve(self, request: Request) -> Handler | Response:
        """The handler of ``request`` (filling its params), or the 404/405 answer."""
        methods = self.exact.get(request.path)
        if methods is None:
            methods = self._match(request)
            if methods is None:
                return json_error(404, ErrorCode.NOT_FOUND.value, f"no such path: {request.path[:200]}")
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return json_error(405, ErrorCode.BAD_REQUEST.value,
                              f"method {request.method} is not allowed on {request.path[:200]} (allowed: {allowed})",
                              headers={"Allow": allowed})
        return handler

    def _match(self, request: Request) -> dict[str, Handler] | None:
        segments = request.path.split("/")
        for pattern, methods in self.patterns:
            if len(pattern) != len(segments):
                continue
            params = {}
            for want, got in zip(pattern, segments):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = urllib.parse.unquote(got) if "%" in got else got
                elif want != got:
                    break
            else:
                request.params = params
                return methods
        return None


class _Refused(Exception):
    """A request refused while it is parsed (raised from a parser callback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection: parses requests, hands them to handlers in order, writes answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.waiting: collections.deque[Request] = collections.deque()  # parsed, not yet handled
        self.current: Request | None = None  # being handled
        self.handling = False  # inside _handle_waiting: an answer given there does not re-enter it
        self.closed = False
        self.lingering: float | None = None  # since when it reads only to drop, after a refusal
        self.refusal: tuple[int, str] | None = None  # to answer once the requests read before it are
        self.paused_reading = False
        self.paused_writing = False
        self.last_active = server.now  # of the last byte or answer, for the keep-alive timeout
        self.started: float | None = None  # first byte of a request being received
        self.answered_at = 0.0  # when its last answer was written (0.0: none yet)
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.request: Request | None = None  # made at the headers

    # -- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.waiting.clear()
        self.current = None

    def data_received(self, data: bytes) -> None:
        if self.closed or self.lingering is not None or self.refusal is not None:
            return
        self.last_active = self.server.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                log.error("HTTP parser callback failed: %r", cause)
                self._refuse(500, "the request could not be read")
        except httptools.HttpParserUpgrade:
            # The upgrade (h2c, websocket) is ignored, as a server may: the request is answered over
            # HTTP/1.1 and the connection closes after it (what follows would be the other protocol).
            for request in (self.current, *self.waiting):
                if request is not None:
                    request.keep_alive = False
            if self.current is None and not self.waiting:
                self._close()
        except httptools.HttpParserError as err:
            self._refuse(400, f"malformed HTTP request: {str(err)[:200]}")

    def pause_writing(self) -> None:
        self.paused_writing = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._resume_reading()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.started = self.server.now

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL_BYTES:
            raise _Refused(414, f"request target is longer than {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise _Refused(431, f"request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        limit = self.server.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise _Refused(400, f"request body of {int(length)} bytes is larger than the limit of {limit} "
                                "(max_message_bytes)")
        server = self.server
        request = self.request = Request(self, self.parser.get_method().decode("ascii", "replace"), self.url,
                                         self.headers, b"", self.parser.should_keep_alive())
        route = request.route = server.router.resolve(request)
        early = server.router.early.get(route) if server.router.early and not isinstance(route, Response) else None
        if early is not None:
            now = time.monotonic()
            waited = server.lag.waited(now)
            if self.answered_at and self.current is None and not self.waiting:
                # A client with nothing outstanding here sent this after its last answer was
                # written: it cannot have waited longer (the loop's lag may be the writing of it).
                waited = min(waited, now - self.answered_at)
            request.waited_s = waited
            request.arrived = now - waited
            answer = early(request)
            if answer is not None:
                request.route = answer  # the body is read and dropped (on_body), not kept
                return
        if self.headers.get("expect", "").lower() == "100-continue" and self.current is None and not self.waiting:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.server.max_body_bytes:
            raise _Refused(400, f"request body is larger than the limit of {self.server.max_body_bytes} bytes "
                                "(max_message_bytes)")
        if not isinstance(self.request.route, Response):  # type: ignore[union-attr]  # headers come first
            self.body.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None  # llhttp completes no message without headers
        request.body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self._reset_message()
        self.started = None
        self.waiting.append(request)
        if self.current is None:
            self._handle_waiting()
        elif len(self.waiting) >= MAX_PIPELINED:
            self._pause_reading()

    # -- answering

    def _handle_waiting(self) -> None:
        self.handling = True
        try:
            self._handle_loop()
        finally:
            self.handling = False
        if self.refusal is not None and self.current is None and not self.waiting:
            self._refuse(*self.refusal)
            return
        if self.paused_reading and len(self.waiting) < MAX_PIPELINED // 2 and not self.paused_writing:
            self._resume_reading()

    def _handle_loop(self) -> None:
        while self.current is None and self.waiting and not self.closed:
            request = self.current = self.waiting.popleft()
            route = request.route
            if isinstance(route, Response):
                self.answer(request, route)
                continue
            try:
                result = route(request)
            except Exception:  # a handler's bug: the client gets a 500, the connection lives on
                log.exception("HTTP handler of %s %s failed", request.method, request.path[:200])
                result = json_error(500, ErrorCode.INTERNAL.value, "internal error")
            if isinstance(result, Response):
                self.answer(request, result)
            elif result is not None:
                task = asyncio.ensure_future(result)
                task.add_done_callback(functools.partial(self._answer_task, request))

    def _answer_task(self, request: Request, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is None and task.result() is None:
            return  # the handler replied itself
        if err is not None:
            log.error("HTTP handler of %s %s failed", request.method, request.path[:200], exc_info=err)
            self.answer(request, json_error(500, ErrorCode.INTERNAL.value, "internal error"))
        else:
            self.answer(request, task.result())

    def answer(self, request: Request, response: Response) -> None:
        """Write ``response`` to ``request`` (the one being handled), then handle the next one."""
        if request is not self.current or self.closed:
            return  # the connection went away (or was refused) meanwhile
        close = not request.keep_alive or self.server.closing
        self._write(response, close, head=request.method == "HEAD")
        self.current = None
        self.last_active = self.server.now
        self.answered_at = time.monotonic()
        if close:
            self._close()
        elif (self.waiting or self.refusal is not None) and not self.handling:
            self._handle_waiting()

    def _write(self, response: Response, close: bool, head: bool = False) -> None:
        body = response.body
        parts = [_status_line(response.status), b"Content-Type: ", response.content_type.encode("latin-1"),
                 b"\r\nContent-Length: ", str(len(body)).encode(), self.server.fixed_headers]
        if response.headers:
            for key, value in response.headers.items():
                parts.append(f"{key}: {value}\r\n".encode("latin-1"))
        parts.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
        if head:
            self.transport.write(b"".join(parts))
        elif len(body) < 16384:
            parts.append(body)
            self.transport.write(b"".join(parts))
        else:  # no copy of a large body
            self.transport.writelines([b"".join(parts), body])

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that could not be read, and close (the stream's framing is lost).

        Requests read before it are answered first, in order: the refusal waits for them (and
        nothing more is read meanwhile).
        """
        if self.closed:
            return
        if self.current is not None or self.waiting:
            self.refusal = (status, message)
            return
        self.refusal = None
        if status >= 500:
            code = ErrorCode.INTERNAL
        else:
            code = ErrorCode.BAD_INPUT if "max_message_bytes" in message else ErrorCode.BAD_REQUEST
        self._write(json_error(status, code.value, message), close=True)
        # A lingering close: the client may still be sending (a body over the limit); closing with its
        # bytes unread would reset the connection and could lose the answer. Say EOF, read and drop
        # what still comes, and close when the client does or after LINGER_S.
        if self.transport.can_write_eof():
            self.lingering = self.server.now
            self.transport.write_eof()
            self._resume_reading()
        else:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
            self.server.connections.discard(self)

    def _pause_reading(self) -> None:
        if not self.paused_reading and not self.closed:
            self.paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.paused_reading and not self.closed:
            self.paused_reading = False
            self.transport.resume_reading()

    def tick(self, now: float) -> None:
        """Enforce the timeouts (called every TICK_S)."""
        if self.lingering is not None:
            if now - self.lingering > LINGER_S:
                self._close()
            return
        if self.current is not None or self.waiting:
            return  # a request is being answered: its query's deadline bounds it
        if self.started is not None:
            if now - self.started > self.server.request_timeout_s:
                self._refuse(408, f"the request was not received whole within {self.server.request_timeout_s:g} s")
        elif now - self.last_active > self.server.keepalive_s:
            self._close()

    def close_when_idle(self) -> None:
        """Close now if nothing is being answered, else after the answer (the server is stopping)."""
        if self.current is None and not self.waiting:
            self._close()


class HttpServer:
    """Serves ``router`` on ``host:port`` (TLS with ``ssl_context``)."""

    def __init__(self, router: Router, max_body_bytes: int, keepalive_s: float = KEEPALIVE_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, lag: LoopLag | None = None) -> None:
        self.router, self.max_body_bytes = router, max_body_bytes
        self.keepalive_s, self.request_timeout_s = keepalive_s, request_timeout_s
        self.connections: set[Connection] = set()
        self.closing = False
        self.now = time.monotonic()
        self.fixed_headers = b""
        self._server: asyncio.base_events.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._set_fixed_headers()
        # How far behind the loop is, asked for early-checked requests (shared with the ZMQ client port).
        self.lag = lag if lag is not None else LoopLag()

    def _set_fixed_headers(self) -> None:
        date = http_date(time.time())
        self.fixed_headers = f"\r\nDate: {date}\r\n{PID_HEADER}: {os.getpid()}\r\n".encode("latin-1")

    async def start(self, host: str, port: int, ssl_context: Any = None) -> int:
        """Listen; the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port, ssl=ssl_context,
                                                reuse_address=True, backlog=1024)
        self._tick_handle = loop.call_later(TICK_S, self._tick)
        return int(self._server.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        self.now = now = time.monotonic()
        self._set_fixed_headers()
        for conn in list(self.connections):
            conn.tick(now)
        self._tick_handle = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    async def stop(self) -> None:
        """Stop listening; close idle connections now and the others after their answer."""
        self.closing = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.lag.stop()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        if self._server is not None:
            await self._server.wait_closed()
