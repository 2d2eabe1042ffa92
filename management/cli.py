"""``schooner``: start a whole deployment in the foreground (``up``), check it (``status``), stop it
(``down``), forget its deployments (``reset``), deploy a model, write an HAProxy configuration."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Sequence

from schooner import defaults
from schooner.urls import redact
from schooner.topology import parse_cpu_list
from schooner.types import BACKENDS
from management import build_image, cli_deploy, instance
from schooner.cli import add_version, setup_logging
from management.errors import ManagementError
from management.stack import Stack

log = logging.getLogger("schooner")


def _cpus(text: str) -> list[int]:
    try:
        return parse_cpu_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``schooner`` argument parser (flags fall back to ``SCHOONER_<NAME>`` env vars)."""
    parser = argparse.ArgumentParser(prog="schooner", description=__doc__)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    state_help = f"the instance's state dir (SCHOONER_STATE_DIR; default {defaults.STATE_DIR})"

    up = sub.add_parser("up", help="start Redis (embedded unless --redis-url), the frontend and the "
                                   "management service; stop them all on Ctrl-C")
    up.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    up.add_argument("--host", default=None, help=f"address to bind (default {defaults.HOST})")
    up.add_argument("--client-port", type=int, default=None, help=f"ZMQ client port (default {defaults.CLIENT_PORT})")
    up.add_argument("--replica-port", type=int, default=None,
                    help=f"ZMQ replica port (default {defaults.REPLICA_PORT})")
    up.add_argument("--http-port", type=int, default=None, help=f"frontend HTTP port (default {defaults.HTTP_PORT})")
    up.add_argument("--management-port", type=int, default=None,
                    help=f"management REST port (default {defaults.MANAGEMENT_PORT})")
    up.add_argument("--free-ports", action="store_true", help="use free loopback ports instead of the defaults")
    up.add_argument("--backend", choices=BACKENDS, default=None, help="replica backend (default process)")
    up.add_argument("--no-admin-token", action="store_true",
                    help="management writes need no token (refused unless --host is loopback); by default "
                         "they need the token generated into <state-dir>/admin-token")
    up.add_argument("--state-dir", default=None, help=f"where embedded Redis and logs live "
                                                       f"(default {defaults.STATE_DIR})")
    up.add_argument("--frontend-cpus", type=_cpus, default=None, help="pin the frontend to these cpus, e.g. 0 or 0-1")
    up.add_argument("--model-root", action="append", default=None, metavar="DIR",
                    help="a directory model files may load from (repeatable; default <state-dir>/models)")
    up.add_argument("--heartbeat-timeout-s", type=float, default=None, help="replica heartbeat timeout")

    cli_deploy.add_parser(sub)
    build_image.add_parser(sub)

    status = sub.add_parser("status", help="ping a running deployment (found from its state dir, else the "
                                           "default ports)")
    status.add_argument("--state-dir", default=None, help=state_help)
    status.add_argument("--management", default=None,
                        help="management URL (default: the instance's, else "
                             f"http://{defaults.HOST}:{defaults.MANAGEMENT_PORT})")
    status.add_argument("--frontend", default=None,
                        help=f"frontend URL (default: the instance's, else http://{defaults.HOST}:{defaults.HTTP_PORT})")
    down = sub.add_parser("down", help="stop the schooner up running from the state dir (and its replicas)")
    down.add_argument("--state-dir", default=None, help=state_help)
    down.add_argument("--timeout-s", type=float, default=90.0, help="how long to wait for it to stop (default 90)")
    reset = sub.add_parser("reset", help="forget every app, model and replica record kept in the state dir "
                                         "(the embedded Redis data) and the logs; model files and the "
                                         "admin token stay")
    reset.add_argument("--state-dir", default=None, help=state_help)
    reset.add_argument("--yes", action="store_true", help="do it without asking")
    haproxy = sub.add_parser("haproxy", help="write an HAProxy configuration balancing HTTP over the "
                                             "frontends announced in Redis (--watch: keep it current)")
    haproxy.add_argument("--redis-url", default=None, help="the deployment's Redis (SCHOONER_REDIS_URL)")
    haproxy.add_argument("--out", required=True, help="configuration file to write")
    haproxy.add_argument("--bind", default="127.0.0.1:8080", help="where HAProxy listens (default 127.0.0.1:8080)")
    haproxy.add_argument("--watch", action="store_true", help="rewrite the file as frontends join and leave")
    haproxy.add_argument("--pid-file", default="", help="pid file of HAProxy (-W -p FILE): reload it on change")
    haproxy.add_argument("--interval-s", type=float, default=1.0, help="how often --watch reads Redis")
    haproxy.add_argument("--ca-file", default="", help="CA of frontends serving HTTPS (verified against it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def haproxy(args: argparse.Namespace) -> int:
    """Write (and with --watch, keep writing) the HAProxy configuration."""
    from management import haproxy as balancer  # noqa: PLC0415 - only this command needs it
    from management.embedded_redis import connect  # noqa: PLC0415
    from management.store import FrontendDirectory  # noqa: PLC0415

    redis_url = defaults.resolve(args.redis_url, "redis_url", "")
    if not redis_url:
        log.error("schooner haproxy needs --redis-url (or SCHOONER_REDIS_URL)")
        return 2
    try:
        config = balancer.BalancerConfig(bind=args.bind, ca_file=args.ca_file)
        directory = FrontendDirectory(connect(redis_url))
        balancer.sync(directory, args.out, config, args.pid_file)
    except ValueError as err:
        log.error("%s", err)
        return 2
    except ManagementError as err:
        log.error("cannot write %s: %s", args.out, err)
        return 1
    if not args.watch:
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    balancer.watch(directory, args.out, config, stop, args.interval_s, args.pid_file)
    return 0


def _port(flag: int | None, name: str, default: int, free: bool) -> int:
    return defaults.resolve(flag, name, 0 if free else default, int)


def up(args: argparse.Namespace) -> int:
    """Run a Stack until SIGINT/SIGTERM."""
    free = args.free_ports
    stack = Stack(
        redis_url=defaults.resolve(args.redis_url, "redis_url", defaults.REDIS_URL),
        host=defaults.resolve(args.host, "host", defaults.HOST),
        client_port=_port(args.client_port, "client_port", defaults.CLIENT_PORT, free),
        replica_port=_port(args.replica_port, "replica_port", defaults.REPLICA_PORT, free),
        http_port=_port(args.http_port, "http_port", defaults.HTTP_PORT, free),
        management_port=_port(args.management_port, "management_port", defaults.MANAGEMENT_PORT, free),
        backend=defaults.resolve(args.backend, "backend", "process"),
        admin_token="" if args.no_admin_token else None,
        state_dir=defaults.resolve(args.state_dir, "state_dir", defaults.STATE_DIR),
        frontend_cpus=args.frontend_cpus,
        heartbeat_timeout_s=args.heartbeat_timeout_s,
        model_roots=args.model_root,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("got %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except ManagementError as err:
        log.error("schooner up failed: %s", err)
        return 1
    try:
        # The Redis password stays out of the file and the output (it is in <state-dir>/redis/redis.password).
        shown = {k: redact(v) for k, v in stack.addresses().items()}
        instance.write_instance(stack.state_dir, shown)
        print(json.dumps(shown, indent=2), flush=True)
        log.info("schooner is up; Ctrl-C (or `schooner down`) stops it")
        while not stop.wait(1.0):
            stack.supervise()  # a dead frontend, management service or Redis is restarted (logged)
        return 0
    finally:
        stack.stop()
        instance.remove_instance(stack.state_dir)
        log.info("schooner stopped")


def _state_dir(args: argparse.Namespace) -> str:
    return defaults.resolve(args.state_dir, "state_dir", defaults.STATE_DIR)


def status(args: argparse.Namespace) -> int:
    """Ping the management service and the frontend; exit 0 only if both answer."""
    record = instance.read_instance(_state_dir(args)) or {}
    if record:
        print(f"schooner up: pid {record['pid']} (state dir {_state_dir(args)})")
    management = args.management or record.get("management") or f"http://{defaults.HOST}:{defaults.MANAGEMENT_PORT}"
    frontend = args.frontend or record.get("frontend_http") or f"http://{defaults.HOST}:{defaults.HTTP_PORT}"
    ok = True
    for name, url in (("management", f"{management.rstrip('/')}/admin/ping"),
                      ("frontend", f"{frontend.rstrip('/')}/health")):
        up_, word, pid = instance.probe(url)
        if up_ and pid is None:
            up_, word = False, "answered, but not a Schooner process"
        print(f"{name}: {'up' if up_ else word} ({url}{f', pid {pid}' if up_ else ''})")
        ok = ok and up_
    return 0 if ok else 1


def down(args: argparse.Namespace) -> int:
    """Stop the instance of the state dir; 0 when it stopped or was not running."""
    state_dir = _state_dir(args)
    try:
        print(f"schooner ({state_dir}): {instance.stop_instance(state_dir, args.timeout_s)}")
    except (TimeoutError, PermissionError) as err:
        log.error("%s", err)
        return 1
    return 0


def reset(args: argparse.Namespace) -> int:
    """Remove the deployments kept in the state dir (after asking, unless --yes)."""
    state_dir = _state_dir(args)
    if not args.yes:
        answer = input(f"forget every app, model and replica kept in {state_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    try:
        removed = instance.reset_state(state_dir)
    except RuntimeError as err:
        log.error("%s", err)
        return 1
    print("removed: " + (", ".join(removed) if removed else "nothing (no deployments kept)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``schooner`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "up":
        return up(args)
    if args.command == "down":
        return down(args)
    if args.command == "reset":
        return reset(args)
    if args.command == "haproxy":
        return haproxy(args)
    if args.command == "deploy":
        return cli_deploy.run(args)
    if args.command == "build-image":
        return build_image.run(args)
    return status(args)


if __name__ == "__main__":
    sys.exit(main())
