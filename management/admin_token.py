"""The admin token: management writes need it by default; it lives in a file, never on a command line.

``schooner up`` (the management service) generates one into
``<state-dir>/admin-token`` (mode 0600) unless ``SCHOONER_ADMIN_TOKEN`` or
``SCHOONER_ADMIN_TOKEN_FILE`` names one. Clients (``schooner deploy``, the
driver, :class:`management.client.AdminClient`) find it the same way:
``SCHOONER_ADMIN_TOKEN``, then ``SCHOONER_ADMIN_TOKEN_FILE``, then
``<state-dir>/admin-token`` (state dir ``SCHOONER_STATE_DIR`` or ``~/.schooner``).
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from schooner import defaults

FILENAME = "admin-token"
ENV = "SCHOONER_ADMIN_TOKEN"
FILE_ENV = "SCHOONER_ADMIN_TOKEN_FILE"


def path(state_dir: str | os.PathLike | None = None) -> str:
    """``<state_dir>/admin-token`` (default state dir: ``SCHOONER_STATE_DIR`` or ``~/.schooner``)."""
    state = state_dir or defaults.resolve(None, "state_dir", defaults.STATE_DIR)
    return os.path.join(os.fspath(state), FILENAME)


def read_file(file: str) -> str:
    """The token in ``file`` (stripped); ValueError if it is empty."""
    with open(file, encoding="utf-8") as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError(f"admin token file {file} is empty")
    return token


def ensure(file: str) -> str:
    """The token in ``file``, generated (mode 0600) if the file does not exist yet."""
    try:
        return read_file(file)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(file)), mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def discover(state_dir: str | os.PathLike | None = None) -> str:
    """The token a client should send: env, env-named file, or the state dir's file ("" if none)."""
    token = os.environ.get(ENV, "").strip()
    if token:
        return token
    named = os.environ.get(FILE_ENV, "")
    if named:
        return read_file(named)
    try:
        return read_file(path(state_dir))
    except (FileNotFoundError, ValueError):
        return ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only to loopback (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
