"""A plain-HTTP GET for readiness probes of our own loopback services, without ``urllib``.

``urllib.request`` brings ``ssl``, ``http.client`` and ``email`` with it: ~7 MiB
in ``schooner up``, a process that only waits for its children and probes them.
This reads a status line and headers, which is all a probe needs.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

_MAX_HEAD_BYTES = 64 * 1024


class ProbeError(OSError):
    """The server did not answer with an HTTP response (refused, timed out, or not HTTP)."""


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, dict[str, str]]:
    """(status, headers with lower-case names) of GET ``url`` (``http://`` only); the body is not read."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"http_get probes http:// URLs, not {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    with socket.create_connection((parts.hostname, port), timeout=timeout_s) as sock:
        sock.sendall(request.encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
            if len(head) > _MAX_HEAD_BYTES:
                raise ProbeError(f"{url}: response head is larger than {_MAX_HEAD_BYTES} bytes")
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise ProbeError(f"{url}: not an HTTP response ({lines[0][:80]!r})")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers
