"""schooner.httpget: the readiness probe `schooner up` and `schooner status` use, against real sockets."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from schooner.httpget import ProbeError, http_get


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        status = 200 if self.path == "/health?x=1" else 404
        self.send_response(status)
        self.send_header("X-Schooner-Pid", "4242")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_status_and_headers_with_lower_case_names(server):
    status, headers = http_get(f"{server}/health?x=1")  # the query string reaches the server
    assert status == 200
    assert headers["x-schooner-pid"] == "4242" and headers["content-length"] == "2"
    status, headers = http_get(f"{server}/other")
    assert status == 404 and headers["x-schooner-pid"] == "4242"


def test_a_closed_port_is_an_os_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OSError):
            http_get(f"http://127.0.0.1:{port}/health", timeout_s=1.0)


def test_a_server_that_does_not_speak_http_is_a_probe_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer():
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"-ERR unknown command\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ProbeError, match="not an HTTP response"):
            http_get(f"http://127.0.0.1:{port}/")
    finally:
        thread.join(5)
        listener.close()


def test_only_plain_http_urls():
    with pytest.raises(ValueError, match="http://"):
        http_get("https://127.0.0.1:1/health")
