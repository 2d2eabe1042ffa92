"""Settings of the management service process: flag -> SCHOONER_<NAME> -> default."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from schooner.cli import add_version
from schooner import defaults, model_roots
from schooner.types import BACKENDS, Backend

RECONCILE_INTERVAL_S = 1.0
_NAMESPACE_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")


def default_docker_namespace(redis_url: str, state_dir: str) -> str:
    """The Docker namespace of one deployment: ``d<hash>`` of its Redis URL, or of its state dir.

    A DockerBackend stops every container in its namespace that its Redis does not
    know, so two deployments on one engine must not share one. The deployment is
    named by its Redis (an explicit URL) or by where its embedded Redis keeps its
    data, both stable across restarts of the management service.
    """
    source = redis_url or "state:" + os.path.realpath(state_dir)
    return "d" + hashlib.sha1(source.encode()).hexdigest()[:10]



@dataclass
class ServiceConfig:
    """Everything ``python -m management`` needs; validated at construction."""

    host: str = defaults.HOST
    port: int = defaults.MANAGEMENT_PORT
    redis_url: str = defaults.REDIS_URL  # empty: start an embedded Redis in state_dir
    state_dir: str = defaults.STATE_DIR
    frontend_http: str = f"http://{defaults.HOST}:{defaults.HTTP_PORT}"
    frontend_rpc: str = f"tcp://{defaults.HOST}:{defaults.REPLICA_PORT}"
    backend: str = Backend.PROCESS.value
    admin_token: str = ""
    log_dir: str = ""  # replica logs; empty: <state_dir>/logs/replicas
    frontend_cpus: list[int] = field(default_factory=list)
    reconcile_interval_s: float = RECONCILE_INTERVAL_S
    log_level: str = "INFO"
    docker_namespace: str = ""  # empty: default_docker_namespace(redis_url, state_dir)
    model_roots: list[str] = field(default_factory=list)  # empty: [<state_dir>/models]
    ray_address: str = ""  # --backend ray: the cluster to join ("" = RAY_ADDRESS, or a local one)
    # CURVE replica links: each replica gets its own key pair (management/keys.py); the frontend's
    # public key is given, or read from <state_dir>/keys/frontend.key_secret (made if missing).
    curve: bool = False
    frontend_curve_key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not self.frontend_http.startswith(("http://", "https://")):
            raise ValueError(f"frontend_http must be an http:// URL, got {self.frontend_http!r}")
        if not self.frontend_rpc.startswith("tcp://"):
            raise ValueError(f"frontend_rpc must be a tcp:// address, got {self.frontend_rpc!r}")
        if self.reconcile_interval_s <= 0:
            raise ValueError("reconcile_interval_s must be > 0")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must be a redis:// URL, got {self.redis_url.split('@')[-1]!r}")
        if not self.docker_namespace:
            self.docker_namespace = default_docker_namespace(self.redis_url, self.state_dir)
        if not _NAMESPACE_RE.match(self.docker_namespace):
            raise ValueError(f"docker_namespace must be [a-zA-Z0-9_.-], got {self.docker_namespace!r}")
        if not self.log_dir:
            self.log_dir = str(Path(self.state_dir) / "logs" / "replicas")
        if not self.model_roots:
            self.model_roots = [model_roots.default_root(self.state_dir)]
        self.model_roots = [os.path.abspath(r) for r in self.model_roots]

    @property
    def redis_state_dir(self) -> str:
        """Where an embedded Redis keeps its data."""
        return os.path.join(self.state_dir, "redis")


def _cpu_list(text: str) -> list[int]:
    from schooner.topology import parse_cpu_list  # noqa: PLC0415 - keeps --help fast

    return parse_cpu_list(text) if text.strip() else []


def _admin_token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The token writes need: "" only with --no-admin-token on loopback; else env, file, or generated."""
    from management import admin_token  # noqa: PLC0415

    host = defaults.resolve(args.host, "host", defaults.HOST)
    if args.no_admin_token or os.environ.get("SCHOONER_NO_ADMIN_TOKEN") == "1":
        if not admin_token.is_loopback(host):
            parser.error(f"--no-admin-token is refused: the management API listens on {host}, not loopback")
        return ""
    token = os.environ.get(admin_token.ENV, "").strip()
    if token:
        return token
    state_dir = defaults.resolve(args.state_dir, "state_dir", defaults.STATE_DIR)
    file = args.admin_token_file or os.environ.get(admin_token.FILE_ENV) or admin_token.path(state_dir)
    try:
        return admin_token.ensure(file)
    except (OSError, ValueError) as err:
        parser.error(f"admin token file {file}: {err}")
        raise  # unreachable


def parse_args(argv: list[str] | None = None) -> ServiceConfig:
    """Parse the command line (each flag also ``SCHOONER_<FLAG>``) into a ServiceConfig."""
    parser = build_parser()
    return _config(parser.parse_args(argv), parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``schooner-management`` argument parser."""
    parser = argparse.ArgumentParser(prog="schooner-management",
                                     description="Schooner management service: REST admin API and replica manager")
    add_version(parser)
    parser.add_argument("--host", help=f"bind address (default {defaults.HOST})")
    parser.add_argument("--management-port", "--port", dest="port", type=int,
                        help=f"REST port (SCHOONER_MANAGEMENT_PORT; default {defaults.MANAGEMENT_PORT})")
    parser.add_argument("--redis-url", help="Redis URL; empty starts an embedded Redis in --state-dir")
    parser.add_argument("--state-dir", help=f"data of the embedded Redis, logs (default {defaults.STATE_DIR})")
    parser.add_argument("--frontend-http", help="the query frontend's HTTP URL (metrics, replica states)")
    parser.add_argument("--frontend-rpc", help="the frontend's replica address replicas connect to")
    parser.add_argument("--backend", choices=BACKENDS, help="where replicas run (default process)")
    parser.add_argument("--admin-token-file", metavar="FILE",
                        help="file holding the token writes need (SCHOONER_ADMIN_TOKEN_FILE; the token itself "
                             "may come as SCHOONER_ADMIN_TOKEN, never as a flag); default "
                             "<state-dir>/admin-token, generated (mode 0600) if missing")
    parser.add_argument("--no-admin-token", action="store_true",
                        help="writes need no token (refused unless --host is loopback)")
    parser.add_argument("--log-dir", help="replica logs (default <state-dir>/logs/replicas)")
    parser.add_argument("--frontend-cpus", help="cores the frontend is pinned to, kept free of replicas (0-1,4)")
    parser.add_argument("--reconcile-interval-s", type=float, help="seconds between reconcile passes")
    parser.add_argument("--docker-namespace",
                        help="label namespace of this deployment's containers (default: from the Redis URL "
                             "or state dir, so deployments sharing an engine keep apart)")
    parser.add_argument("--model-root", action="append", default=None, metavar="DIR",
                        help="a directory model files may load from (repeatable; SCHOONER_MODEL_ROOTS, "
                             f"{os.pathsep!r}-separated; default <state-dir>/models, created mode 0700)")
    parser.add_argument("--ray-address", help="--backend ray: the Ray cluster (host:port of its head; default "
                                              "RAY_ADDRESS, else a local Ray started for this service)")
    parser.add_argument("--curve", action="store_true", default=None,
                        help="CURVE replica links: issue each replica its own key (SCHOONER_CURVE=1)")
    parser.add_argument("--frontend-curve-key",
                        help="the frontend's public CURVE key (default: <state-dir>/keys/frontend.key_secret)")
    parser.add_argument("--log-level", default=os.environ.get("SCHOONER_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING... (default INFO)")
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServiceConfig:
    base = ServiceConfig.__dataclass_fields__
    try:
        return ServiceConfig(
            host=defaults.resolve(args.host, "host", defaults.HOST),
            port=defaults.resolve(args.port, "management_port", defaults.MANAGEMENT_PORT, int),
            redis_url=defaults.resolve(args.redis_url, "redis_url", defaults.REDIS_URL),
            state_dir=defaults.resolve(args.state_dir, "state_dir", defaults.STATE_DIR),
            frontend_http=defaults.resolve(args.frontend_http, "frontend_http", base["frontend_http"].default),
            frontend_rpc=defaults.resolve(args.frontend_rpc, "frontend_rpc", base["frontend_rpc"].default),
            backend=defaults.resolve(args.backend, "backend", Backend.PROCESS.value),
            admin_token=_admin_token(args, parser),
            log_dir=defaults.resolve(args.log_dir, "log_dir", ""),
            frontend_cpus=_cpu_list(defaults.resolve(args.frontend_cpus, "frontend_cpus", "")),
            reconcile_interval_s=defaults.resolve(args.reconcile_interval_s, "reconcile_interval_s",
                                                  RECONCILE_INTERVAL_S, float),
            log_level=args.log_level.upper(),
            docker_namespace=defaults.resolve(args.docker_namespace, "docker_namespace", ""),
            model_roots=args.model_root or model_roots.from_env() or [],
            ray_address=defaults.resolve(args.ray_address, "ray_address", ""),
            curve=defaults.resolve(args.curve, "curve", False, lambda v: v.lower() in ("1", "yes", "true", "on")),
            frontend_curve_key=defaults.resolve(args.frontend_curve_key, "frontend_curve_key", ""),
        )
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
