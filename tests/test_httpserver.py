"""frontend.httpserver over real loopback sockets: framing, keep-alive, pipelining, limits, timeouts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import requests

from frontend import httpserver
from frontend.httpserver import HttpServer, Request, Response, Router
from schooner.cli import PID_HEADER

MAX_BODY = 64 * 1024


class ServerThread:
    def __init__(self, **kwargs) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        router = Router()
        router.add("POST", "/echo", lambda r: Response(r.body, content_type="application/octet-stream"))
        router.add("GET", "/later/{ms}", self._later)
        router.add("GET", "/async", self._async)
        router.add("GET", "/boom", self._boom)
        router.add("GET", "/query", lambda r: Response(json.dumps(r.query).encode()))
        router.add("POST", "/{app}/predict", lambda r: Response(json.dumps(r.params).encode()))
        self.early_seen: list[float] = []  # waited_s of each request the early check saw
        self.gated_bodies: list[int] = []  # body sizes the gated handler got
        router.add("POST", "/gate/{what}", self._gated, early=self._early)
        router.add("GET", "/block/{ms}", self._block)
        self.server = HttpServer(router, MAX_BODY, **kwargs)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _later(self, request: Request) -> None:
        ms = int(request.params["ms"])
        self.loop.call_later(ms / 1000, request.reply, Response(str(ms).encode()))

    async def _async(self, request: Request) -> Response:
        await asyncio.sleep(0.01)
        return Response(b'"async"')

    def _early(self, request: Request) -> Response | None:
        self.early_seen.append(request.waited_s)
        if request.params["what"] == "refuse":
            return Response(b'"refused at the headers"', status=429)
        return None

    def _gated(self, request: Request) -> Response:
        self.gated_bodies.append(len(request.body))
        return Response(str(len(request.body)).encode())

    def _block(self, request: Request) -> Response:
        time.sleep(int(request.params["ms"]) / 1000)  # a loop busy with other work: nothing is read meanwhile
        return Response(b'"unblocked"')

    def _boom(self, request: Request) -> Response:
        raise RuntimeError("a handler bug")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture()
def server():
    s = ServerThread()
    yield s
    s.stop()


def _raw(port: int, data: bytes, timeout: float = 5.0, until_close: bool = False, expect: int = 1) -> bytes:
    """Send ``data`` and read until ``expect`` whole answers (or until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not until_close and _count_answers(out) >= expect:
                break
        return out


def _bodies(data: bytes) -> list[bytes]:
    """The bodies of the whole answers in ``data``, in order (100 Continue skipped)."""
    out = []
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            return out
        head = data[:head_end].decode("latin-1").lower()
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)
        if len(data) < head_end + 4 + length:
            return out
        if not head.startswith("http/1.1 100"):
            out.append(data[head_end + 4:head_end + 4 + length])
        data = data[head_end + 4 + length:]


def _count_answers(data: bytes) -> int:
    return len(_bodies(data))


def test_http_date_is_the_imf_fixdate():
    import email.utils
    for t in (0, 1_796_275_272, time.time()):
        assert httpserver.http_date(t) == email.utils.formatdate(t, usegmt=True)


def test_keep_alive_reuses_one_connection_and_every_answer_names_the_pid(server):
    with requests.Session() as s:
        answers = [s.post(f"{server.url}/echo", data=b"x" * n) for n in (0, 1, 5000, 40000)]
    assert [len(a.content) for a in answers] == [0, 1, 5000, 40000]
    assert all(a.status_code == 200 and a.headers[PID_HEADER].isdigit() and "Date" in a.headers for a in answers)
    assert len(server.server.connections) <= 1


def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slowest(server):
    data = b"".join(f"GET /later/{ms} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for ms in (200, 0, 50, 0))
    out = _raw(server.port, data, expect=4)
    assert _bodies(out) == [b"200", b"0", b"50", b"0"]


def test_chunked_body_and_expect_100_continue(server):
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert _bodies(_raw(server.port, chunked)) == [b"hello world"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abc")
        assert sock.recv(1000).endswith(b"\r\n\r\nabc")


def test_http10_closes_after_the_answer_unless_kept_alive(server):
    out = _raw(server.port, b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", until_close=True)
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out and out.endswith(b"hi")
    out = _raw(server.port, b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
               b"POST /echo HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nho", until_close=True)
    assert _bodies(out) == [b"hi", b"ho"]


def test_unknown_path_404_wrong_method_405_with_allow_and_head_has_no_body(server):
    r = requests.get(f"{server.url}/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = requests.get(f"{server.url}/echo")
    assert r.status_code == 405 and r.headers["Allow"] == "POST" and "GET" in r.json()["message"]
    r = requests.head(f"{server.url}/query")
    assert r.status_code == 200 and r.content == b"" and int(r.headers["Content-Length"]) > 0
    assert requests.post(f"{server.url}/my%20app/predict").json() == {"app": "my app"}
    assert requests.post(f"{server.url}//predict").status_code == 404  # an empty segment is no app


def test_query_string_and_async_handlers_and_a_handler_bug_is_a_500_on_a_live_connection(server):
    with requests.Session() as s:
        assert s.get(f"{server.url}/query?format=prometheus&x=1&x=2").json() == {"format": "prometheus", "x": "1"}
        assert s.get(f"{server.url}/async").json() == "async"
        r = s.get(f"{server.url}/boom")
        assert r.status_code == 500 and r.json()["error"] == "internal"
        assert s.get(f"{server.url}/async").status_code == 200


def test_a_body_over_the_limit_is_refused_at_its_headers_and_the_client_reads_the_answer(server):
    r = requests.post(f"{server.url}/echo", data=b"x" * (4 * MAX_BODY))
    assert r.status_code == 400 and r.json()["error"] == "bad_input" and "max_message_bytes" in r.json()["message"]
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % (MAX_BODY + 1) + b"y" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n")
    out = _raw(server.port, chunked, until_close=True)
    assert out.startswith(b"HTTP/1.1 400") and b"max_message_bytes" in out


@pytest.mark.parametrize("data, status", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /" + b"a" * (httpserver.MAX_URL_BYTES + 1) + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(httpserver.MAX_HEADERS + 1)) + b"\r\n", 431),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),  # smuggling
])
def test_malformed_requests_get_a_json_error_and_a_closed_connection(server, data, status):
    out = _raw(server.port, data, until_close=True)
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
    assert b"Connection: close" in out and json.loads(_bodies(out)[0])["error"] == "bad_request"
    assert requests.get(f"{server.url}/query").status_code == 200  # the server serves on


def test_a_malformed_request_behind_a_pending_one_is_refused_after_its_answer(server):
    out = _raw(server.port, b"GET /later/150 HTTP/1.1\r\nHost: x\r\n\r\nNONSENSE\r\n\r\n", until_close=True)
    assert out.startswith(b"HTTP/1.1 200") and _bodies(out)[0] == b"150"
    assert out.count(b"HTTP/1.1 400") == 1 and out.index(b"HTTP/1.1 400") > out.index(b"150")


def test_an_upgrade_is_ignored_the_request_answered_and_the_connection_closed(server):
    out = _raw(server.port, b"GET /query?a=1 HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI * HTTP/2.0",
               until_close=True)
    assert out.startswith(b"HTTP/1.1 200") and _bodies(out) == [b'{"a": "1"}']  # and closed


def test_idle_connections_are_closed_and_a_request_sent_too_slowly_gets_408(monkeypatch):
    monkeypatch.setattr(httpserver, "TICK_S", 0.05)
    s = ServerThread(keepalive_s=0.3, request_timeout_s=0.3)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            sock.sendall(b"GET /query HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            out = b""
            while chunk := sock.recv(1000):
                out += chunk
            assert out.startswith(b"HTTP/1.1 200") and 0.2 < time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            sock.sendall(b"GET /query HTTP/1.1\r\nHo")
            out = b""
            while chunk := sock.recv(1000):
                out += chunk
            assert out.startswith(b"HTTP/1.1 408")
    finally:
        s.stop()


def test_a_client_that_never_reads_answers_stops_being_read(server):
    """Write backpressure: the server pauses reading rather than buffer answers without bound."""
    big = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"z" * 60000
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        stream = memoryview(big * 2000)  # 120 MB of pipelined requests, never an answer read
        sent = 0
        stalled_since = None
        deadline = time.monotonic() + 10
        while sent < len(stream) and time.monotonic() < deadline:
            try:
                sent += sock.send(stream[sent:sent + 1 << 20])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
                time.sleep(0.01)
        conn = next(c for c in list(server.server.connections) if c.lingering is None)
        assert conn.paused_reading and conn.paused_writing
        assert sent < len(stream) // 4  # both sides' buffers are full and the server stopped reading
        assert conn.transport.get_write_buffer_size() < 1 << 20
        assert len(conn.waiting) <= httpserver.MAX_PIPELINED + 64  # one read's worth beyond the pause


def test_an_early_answer_is_given_at_the_headers_and_its_body_dropped_unbuffered(server):
    body = b"x" * 40_000
    data = (f"POST /gate/refuse HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            + b"POST /gate/keep HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    out = _raw(server.port, data, expect=2)
    assert _bodies(out) == [b'"refused at the headers"', b"3"]  # in order, on one live connection
    assert out.startswith(b"HTTP/1.1 429 ") and server.gated_bodies == [3]


def test_waited_counts_how_long_a_busy_loop_left_a_request_unread(server):
    with requests.Session() as s:
        assert s.post(f"{server.url}/gate/keep", data=b"1").status_code == 200  # starts the lag timer
        assert server.early_seen[-1] == 0.0
        time.sleep(0.01)
        assert s.post(f"{server.url}/gate/keep", data=b"1").status_code == 200
        assert server.early_seen[-1] < 0.02  # a loop that keeps up: read at once (a loaded CI machine runs it late)
        blocker = threading.Thread(target=lambda: requests.get(f"{server.url}/block/150", timeout=5))
        blocker.start()
        time.sleep(0.03)  # the loop is inside the 150 ms handler; this request waits in its socket
        t0 = time.monotonic()
        assert s.post(f"{server.url}/gate/keep", data=b"1").status_code == 200
        waited_for_real = time.monotonic() - t0
        blocker.join()
    # It waited in its socket from 30 ms into the loop's 150 ms stretch to its end: the estimate is
    # bounded by the stretch and covers the wait.
    assert waited_for_real > 0.08
    assert waited_for_real - 0.005 <= server.early_seen[-1] <= 0.160



def _exchange(sock: socket.socket, raw: bytes) -> bytes:
    """Send one request and read its whole answer (a short body with a Content-Length)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_request_sent_after_its_connections_last_answer_did_not_wait_through_the_stretch_before_it(server):
    # A busy stretch of the loop ends with writing an answer; the lag timer then runs late. The
    # client's next request, sent as soon as it has that answer (read just after the timer ran),
    # waited for none of that stretch: it was counted as having waited all of it.
    gate = b"POST /gate/keep HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        assert b" 200 " in _exchange(sock, gate)  # starts the lag timer
        assert b" 200 " in _exchange(sock, b"GET /block/150 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in _exchange(sock, gate)
    assert server.early_seen[-1] < 0.02
