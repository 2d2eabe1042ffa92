"""CurveZMQ keys: the one file format, the environment variables, and socket set-up on every side.

The frontend has a server key pair; each replica gets a client key pair of its
own from the manager (:mod:`management.keys`). Public keys are not secret:
they travel in Redis and on command lines. Secret keys live only in files
written ``0600`` (the format of ``zmq.auth``'s certificates, so
``zmq.auth.load_certificate`` reads them) or, for a container, in the
environment variable :data:`ENV_SECRET_KEY`; never on a command line.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

import zmq
import zmq.auth
from zmq.utils import z85

ENV_SECRET_FILE = "SCHOONER_CURVE_SECRET_FILE"  # path of this process's key pair file
ENV_SECRET_KEY = "SCHOONER_CURVE_SECRET_KEY"  # or the secret key itself (z85), for containers
ENV_SERVER_KEY = "SCHOONER_CURVE_SERVER_KEY"  # the frontend's public key (z85), which replicas check

REPLICA_DOMAIN = "replica"  # ZAP domain of the frontend's replica port
CLIENT_DOMAIN = "client"  # ZAP domain of the frontend's client port


class CurveError(ValueError):
    """A key file or key that cannot be used."""


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair, both halves z85 text (40 characters)."""

    public: str
    secret: str

    def __repr__(self) -> str:  # never print a secret by accident
        return f"KeyPair(public={self.public!r}, secret=<hidden>)"

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public.decode("ascii"), secret.decode("ascii"))

    @classmethod
    def from_secret(cls, secret: str) -> KeyPair:
        """The pair of a z85 secret key; CurveError if it is not one."""
        if not isinstance(secret, str) or len(secret.strip()) != 40:
            raise CurveError("a CURVE secret key is 40 characters of z85")
        try:
            public = zmq.curve_public(secret.strip().encode("ascii"))
        except (zmq.ZMQError, ValueError, UnicodeEncodeError) as err:
            raise CurveError(f"not a CURVE secret key: {err}") from None
        return cls(public.decode("ascii"), secret.strip())


def check_public_key(key: str, what: str = "public key") -> str:
    """``key`` if it is a z85 public key (40 characters); CurveError otherwise."""
    if not isinstance(key, str) or len(key) != 40:
        raise CurveError(f"{what} must be 40 characters of z85, got {len(key) if isinstance(key, str) else key!r}")
    try:
        z85.decode(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError) as err:
        raise CurveError(f"{what} is not z85: {err}") from None
    return key


def write_key_file(path: str | os.PathLike, pair: KeyPair) -> Path:
    """Write ``pair`` to ``path`` (mode 0600, atomically) in zmq.auth's certificate format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (f"#   ****  Schooner CURVE key pair, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
            "  ****\n#   Secret: keep it private (mode 0600).\nmetadata\ncurve\n"
            f'    public-key = "{pair.public}"\n    secret-key = "{pair.secret}"\n')
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_key_file(path: str | os.PathLike) -> KeyPair:
    """The key pair in ``path``; CurveError if it is missing, unreadable, or readable by others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CurveError(f"cannot read CURVE key file {path}: {err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CurveError(f"CURVE key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                         "make it 0600")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as err:
        raise CurveError(f"cannot read CURVE key file {path}: {err}") from None
    if not secret:
        raise CurveError(f"CURVE key file {path} holds no secret key")
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def load_or_create(path: str | os.PathLike) -> KeyPair:
    """The key pair in ``path``, made (0600) first if the file does not exist."""
    path = Path(path)
    if not path.exists():
        write_key_file(path, KeyPair.generate())
    return read_key_file(path)


def pair_from_env(environ: MutableMapping[str, str] | None = None) -> KeyPair | None:
    """This process's key pair from :data:`ENV_SECRET_FILE` or :data:`ENV_SECRET_KEY`; None if neither.

    The secret variable is removed from the environment once read, so child
    processes do not inherit it.
    """
    env = os.environ if environ is None else environ
    secret = env.pop(ENV_SECRET_KEY, "")
    if secret:
        return KeyPair.from_secret(secret)
    path = env.get(ENV_SECRET_FILE, "")
    return read_key_file(path) if path else None


def client_socket(sock: zmq.Socket, pair: KeyPair, server_key: str) -> zmq.Socket:
    """Make ``sock`` (before it connects) a CURVE client of the server with public key ``server_key``."""
    sock.curve_serverkey = server_key.encode("ascii")
    sock.curve_publickey = pair.public.encode("ascii")
    sock.curve_secretkey = pair.secret.encode("ascii")
    return sock


def server_socket(sock: zmq.Socket, pair: KeyPair, domain: str) -> zmq.Socket:
    """Make ``sock`` (before it binds) a CURVE server whose peers ZAP checks under ``domain``."""
    sock.curve_server = True
    sock.curve_secretkey = pair.secret.encode("ascii")
    sock.zap_domain = domain.encode("ascii")
    return sock
