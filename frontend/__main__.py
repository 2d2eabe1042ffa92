"""``python -m frontend``: run the query frontend (flags, else SCHOONER_* env vars, else defaults)."""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import logging
import signal
from collections.abc import Sequence

import zmq.asyncio

from schooner import curve, defaults
from schooner.cli import add_version, run_listening, setup_logging
from schooner.transport import set_io_thread_policy
from frontend.config import FrontendConfig, load_state_file
from frontend.server import Frontend

log = logging.getLogger("frontend")


def _port(raw: str) -> int:
    return int(raw)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; unset ones resolve from the environment later."""
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``schooner-frontend`` argument parser."""
    p = argparse.ArgumentParser(prog="schooner-frontend", description=__doc__)
    add_version(p)
    p.add_argument("--host", help=f"address to bind (default {defaults.HOST})")
    p.add_argument("--client-port", type=_port, help=f"ZMQ client port (default {defaults.CLIENT_PORT})")
    p.add_argument("--replica-port", type=_port, help=f"ZMQ replica port (default {defaults.REPLICA_PORT})")
    p.add_argument("--http-port", type=_port, help=f"HTTP port (default {defaults.HTTP_PORT}); 0 = a free "
                                                   "port; -1 = no HTTP endpoint")
    p.add_argument("--heartbeat-interval-s", type=float,
                   help=f"seconds between heartbeats to replicas (default {defaults.HEARTBEAT_INTERVAL_S})")
    p.add_argument("--heartbeat-timeout-s", type=float,
                   help=f"replica silence before it is dead (default {defaults.HEARTBEAT_TIMEOUT_S})")
    p.add_argument("--batch-timeout-s", type=float, help="a batch in flight longer marks its replica dead")
    p.add_argument("--curve-secret-file", help="the frontend's CURVE key pair file: replicas must hold a key the "
                                                "manager registered (SCHOONER_FRONTEND_CURVE_SECRET_FILE)")
    p.add_argument("--curve-replica-key", action="append", default=[], metavar="REPLICA_ID=PUBLIC_KEY",
                   help="admit this replica key (repeatable; public keys; for a frontend without Redis)")
    p.add_argument("--client-curve", action="store_true", default=None,
                   help="CURVE on the client port too (clients need the frontend's public key)")
    p.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--spin-us", type=int, help="busy-poll window after a burst, µs (0 = off)")
    p.add_argument("--pipeline-depth", type=int,
                   help=f"batches in flight to one replica (default {defaults.PIPELINE_DEPTH}; 1 = one at a time)")
    p.add_argument("--advertise-host", help="host others reach this frontend by, announced in Redis "
                                            "(default: --host, or this machine's address for 0.0.0.0)")
    p.add_argument("--frontend-id", help="this frontend's id in Redis's frontend directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", help="DeploymentState JSON file to serve")
    source.add_argument("--redis-url", help="follow the deployment kept in this Redis")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING... (default INFO)")
    return p


def build_config(args: argparse.Namespace) -> FrontendConfig:
    """FrontendConfig from flags -> SCHOONER_<NAME> -> defaults."""
    http_port = defaults.resolve(args.http_port, "http_port", defaults.HTTP_PORT, int)
    return FrontendConfig(
        host=defaults.resolve(args.host, "host", defaults.HOST),
        client_port=defaults.resolve(args.client_port, "client_port", defaults.CLIENT_PORT, int),
        replica_port=defaults.resolve(args.replica_port, "replica_port", defaults.REPLICA_PORT, int),
        http_port=None if http_port == -1 else http_port,
        heartbeat_interval_s=defaults.resolve(args.heartbeat_interval_s, "heartbeat_interval_s",
                                              defaults.HEARTBEAT_INTERVAL_S, float),
        heartbeat_timeout_s=defaults.resolve(args.heartbeat_timeout_s, "heartbeat_timeout_s",
                                             defaults.HEARTBEAT_TIMEOUT_S, float),
        batch_timeout_s=defaults.resolve(args.batch_timeout_s, "batch_timeout_s", defaults.BATCH_TIMEOUT_S, float),
        spin_us=defaults.resolve(args.spin_us, "spin_us", defaults.FRONTEND_SPIN_US, int),
        pipeline_depth=defaults.resolve(args.pipeline_depth, "pipeline_depth", defaults.PIPELINE_DEPTH, int),
        curve_secret_file=defaults.resolve(args.curve_secret_file, "frontend_curve_secret_file", ""),
        client_curve=defaults.resolve(args.client_curve, "client_curve", False,
                                      lambda v: v.lower() in ("1", "yes", "true", "on")),
        tls_cert_file=defaults.resolve(args.tls_cert, "tls_cert", ""),
        tls_key_file=defaults.resolve(args.tls_key, "tls_key", ""),
        advertise_host=defaults.resolve(args.advertise_host, "advertise_host", ""),
        frontend_id=defaults.resolve(args.frontend_id, "frontend_id", ""),
    )


async def run(config: FrontendConfig, config_file: str | None, redis_url: str | None,
              replica_keys: Sequence[str] = ()) -> None:
    """Serve until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ctx = zmq.asyncio.Context()
    set_io_thread_policy(ctx)
    # Following Redis: not ready (queries get not_ready, never unknown_app) until the first sync.
    fe = Frontend(dataclasses.replace(config, start_ready=not redis_url), ctx=ctx)
    if config_file:
        fe.apply_state(load_state_file(config_file))
    await fe.start()
    for item in replica_keys:
        rid, _, key = item.partition("=")
        if fe.auth is not None:
            fe.auth.add_replica_key(curve.check_public_key(key.strip(), "--curve-replica-key"), rid.strip())
    follower = announcer = None
    if redis_url:
        from frontend import announce, follower as follower_mod  # only the Redis-backed deployment needs them

        follower = loop.create_task(follower_mod.follow(fe, redis_url, stop))
        announcer = loop.create_task(announce.announce(fe, redis_url, stop, frontend_id=config.frontend_id))
    try:
        await stop.wait()
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        if announcer is not None:
            stop.set()  # the announcer withdraws this frontend from Redis on its way out
            try:
                await asyncio.wait_for(announcer, 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down either way
                log.warning("frontend record not withdrawn from Redis; it expires on its own")
        await fe.stop()
        ctx.term()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m frontend`` and ``schooner-frontend``."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    redis_url = args.redis_url if args.redis_url is not None else (defaults.resolve(None, "redis_url", "") or None)
    config_file = args.config or defaults.resolve(None, "config", "") or None
    if config_file and args.redis_url is None:
        redis_url = None
    config = build_config(args)
    if defaults.resolve(None, "uvloop", "1") != "0":
        try:
            import uvloop  # libuv's loop: about a third less CPU per HTTP query than asyncio's own
        except ImportError:
            pass
        else:
            run_listening("schooner-frontend", uvloop.run, run(config, config_file, redis_url, args.curve_replica_key))
            return
    run_listening("schooner-frontend", asyncio.run, run(config, config_file, redis_url, args.curve_replica_key))


if __name__ == "__main__":
    main()
