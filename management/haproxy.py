"""HAProxy in front of the frontends' HTTP ports: its configuration, written from Redis's frontend directory.

``schooner haproxy --redis-url URL --out /etc/haproxy/schooner.cfg`` writes a
configuration with one ``server`` per live frontend (health-checked on
``GET /health``); ``--watch`` keeps rewriting it as frontends join and leave
and, given ``--pid-file`` of an HAProxy started in master-worker mode
(``haproxy -W -f FILE -p PIDFILE``), sends the master SIGUSR2 so it reloads
without dropping connections. See docs/SCALING.md, "HTTP load balancer".
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from management.errors import StoreUnavailable
from management.store import FrontendDirectory

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class BalancerConfig:
    """What the generated HAProxy configuration says beyond the server list."""

    bind: str = "127.0.0.1:8080"  # where HAProxy takes client HTTP
    check_interval_ms: int = 500  # health check of each frontend
    fall: int = 2  # failed checks before a frontend is out
    rise: int = 1
    timeout_connect_ms: int = 1000
    timeout_server_ms: int = 60_000  # longer than any app's SLO
    retries: int = 2
    stats_bind: str = ""  # e.g. 127.0.0.1:8404 for HAProxy's stats page; "" = none
    # Frontends serving HTTPS (--tls-cert): the CA that signed their certificates; "" = not verified
    # (logged), for self-signed certificates on a private network.
    ca_file: str = ""

    def __post_init__(self) -> None:
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bind must be host:port, got {self.bind!r}")
        for name in ("check_interval_ms", "fall", "rise", "timeout_connect_ms", "timeout_server_ms"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")


def render(frontends: list[dict], config: BalancerConfig) -> str:
    """The HAProxy configuration text for these frontend records (from :meth:`FrontendDirectory.live`)."""
    lines = [
        "# Written by `schooner haproxy` from the frontends announced in Redis; rewritten when they change.",
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {config.timeout_connect_ms}ms",
        "    timeout client 60s",
        f"    timeout server {config.timeout_server_ms}ms",
        "    timeout http-keep-alive 10s",
        "    option http-keep-alive",
        # A request whose frontend refused or dropped the connection goes to another one.
        f"    retries {config.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend schooner_http",
        f"    bind {config.bind}",
        "    default_backend schooner_frontends",
        "",
        "backend schooner_frontends",
        "    balance leastconn",
        "    option httpchk GET /health",
        "    http-check expect status 200",
    ]
    servers = []
    for row in sorted(frontends, key=lambda r: r.get("frontend_id", "")):
        url = row.get("http") or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            log.warning("frontend %s announces HTTP at %r: not an http(s)://host:port URL, left out",
                        row.get("frontend_id"), url)
            continue
        name = _SAFE.sub("_", row.get("frontend_id", "")) or f"f{len(servers)}"
        tls = ""
        if parts.scheme == "https":
            if config.ca_file:
                tls = f" ssl verify required ca-file {config.ca_file}"
            else:
                log.warning("frontend %s serves HTTPS; HAProxy will not verify its certificate (no ca_file)",
                            row.get("frontend_id"))
                tls = " ssl verify none"
        servers.append(f"    server {name} {parts.hostname}:{parts.port} check inter {config.check_interval_ms}ms "
                       f"fall {config.fall} rise {config.rise}{tls}")
    if not servers:
        lines.append("    # no frontend is announced in Redis yet: every request gets 503")
    lines += servers
    if config.stats_bind:
        lines += ["", "listen stats", f"    bind {config.stats_bind}", "    stats enable", "    stats uri /"]
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` by rename (HAProxy never reads half a file); False if it was unchanged."""
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".schooner-haproxy-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def reload(pid_file: str) -> None:
    """Ask the HAProxy master whose pid is in ``pid_file`` to reload (SIGUSR2, master-worker mode)."""
    try:
        with open(pid_file, encoding="ascii") as fh:
            pid = int(fh.read().split()[0])
        os.kill(pid, signal.SIGUSR2)
        log.info("asked HAProxy (pid %d) to reload", pid)
    except (OSError, ValueError, IndexError) as err:
        log.warning("cannot reload HAProxy from %s: %s", pid_file, err)


def sync(directory: FrontendDirectory, path: str, config: BalancerConfig, pid_file: str = "") -> bool:
    """Write the configuration for the live frontends; reload HAProxy if it changed. True if it changed."""
    changed = write_atomic(path, render(directory.live(), config))
    if changed:
        log.info("wrote %s", path)
        if pid_file:
            reload(pid_file)
    return changed


def watch(directory: FrontendDirectory, path: str, config: BalancerConfig, stop: threading.Event,
          interval_s: float = 1.0, pid_file: str = "") -> None:
    """:func:`sync` every ``interval_s`` until ``stop``; a Redis outage keeps the last configuration."""
    while not stop.is_set():
        try:
            sync(directory, path, config, pid_file)
        except StoreUnavailable as err:
            log.warning("Redis unavailable (%s); HAProxy keeps its last configuration", err)
        stop.wait(interval_s)
