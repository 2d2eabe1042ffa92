"""``python -m containers.replica``: parse flags and env, pin, load the model, run the runtime.

``python -m containers.replica --model noop --frontend tcp://127.0.0.1:7000 --cpus 0,1``
(every flag also ``SCHOONER_<FLAG>``). The serving loop itself is
:class:`containers.runtime.Replica`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

import zmq

from containers import pinning
from containers.errors import LOAD_ERROR_MARKER, LOAD_FAILED_EXIT, ContainerError
from containers.models import load_model
from containers.runtime import Replica, ReplicaConfig
from schooner import __version__
from schooner.cli import setup_logging
from schooner.transport import set_io_thread_policy
from schooner import curve, defaults, model_roots

__all__ = ["Replica", "ReplicaConfig", "main"]

log = logging.getLogger(__name__)


def _yes_no(text: str | None, name: str) -> bool | None:
    if text is None or text == "":
        return None
    value = {"1": True, "yes": True, "true": True, "0": False, "no": False, "false": False}.get(text.lower())
    if value is None:
        raise ValueError(f"{name} must be yes or no, got {text!r}")
    return value


class _VersionOrModelVersion(argparse.Action):
    """``--version``: the program's version; ``--version V``: the model version (the old spelling)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None:
            parser.exit(message=f"{parser.prog} {__version__}\n")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """The ``schooner-replica`` argument parser (each flag also ``SCHOONER_<FLAG>``)."""
    p = argparse.ArgumentParser(prog="schooner-replica", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="zoo model to serve (SCHOONER_MODEL)")
    p.add_argument("--frontend", help="frontend replica address(es), comma-separated; default "
                                      "tcp://127.0.0.1:7000 (the others are learnt from the frontends)")
    p.add_argument("--cpus", help="cpus to pin to, e.g. 0,1 or 0-3,6 (default: not pinned)")
    p.add_argument("--gpu", help="gpu index to use (default: none)")
    p.add_argument("--name", help="model name announced to the frontend (default: --model)")
    p.add_argument("--model-version", dest="version", help="model version (default 1)")
    # --version alone prints the program's version; "--version V", the old spelling of
    # --model-version, still sets the model version.
    p.add_argument("--version", dest="version", nargs="?", action=_VersionOrModelVersion, metavar="V",
                   help="without a value: print the program's version and exit (with one: --model-version)")
    p.add_argument("--replica-id", help="replica id (default: a fresh uuid)")
    p.add_argument("--model-path", help="model data path passed to the loader")
    p.add_argument("--model-opts", help="JSON object of loader options, e.g. '{\"a_ms\": 5}'")
    p.add_argument("--input-type", help="input type announced (default: the model's own)")
    p.add_argument("--heartbeat-interval-s", help="seconds between heartbeats (default 1)")
    p.add_argument("--frontend-timeout-s", help="frontend silence before registering again (default 5)")
    p.add_argument("--spin-us", help="after a batch, poll without blocking this many µs "
                                     f"(default {defaults.REPLICA_SPIN_US}; 0 = off)")
    p.add_argument("--spin-mode", help="placement (default: spin only on cores this replica owns, adaptively "
                                       "when unknown), adaptive, always or never")
    p.add_argument("--owns-cores", help="yes/no: no other process is placed on this replica's cores "
                                        "(the manager says; default unknown)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (default INFO)")
    return p


def _parse_args(argv: list[str] | None) -> ReplicaConfig:
    p = build_parser()
    args = p.parse_args(argv)

    def opt(flag: str, cast: Any = str) -> Any:
        return defaults.resolve(getattr(args, flag), flag, None, cast)

    try:
        setup_logging(opt("log_level") or "INFO")
        model = opt("model")
        if not model:
            p.error("--model (or SCHOONER_MODEL) is required")
        cpus_spec = opt("cpus")
        gpu = opt("gpu")
        opts = json.loads(opt("model_opts") or "{}")
        return ReplicaConfig(
            model=model,
            frontend=opt("frontend") or ReplicaConfig.frontend,
            cpus=pinning.parse_cpus(cpus_spec) if cpus_spec else None,
            gpu=int(gpu) if gpu not in (None, "", "none") else None,
            name=opt("name") or "",
            version=opt("version") or "1",
            replica_id=opt("replica_id") or "",
            model_path=opt("model_path") or "",
            model_opts=opts,
            input_type=opt("input_type") or None,
            heartbeat_interval_s=float(opt("heartbeat_interval_s") or defaults.HEARTBEAT_INTERVAL_S),
            frontend_timeout_s=float(opt("frontend_timeout_s") or defaults.HEARTBEAT_TIMEOUT_S),
            spin_us=defaults.resolve(None if args.spin_us is None else int(args.spin_us), "replica_spin_us",
                                     defaults.REPLICA_SPIN_US, int),
            spin_mode=opt("spin_mode") or "placement",
            owns_cores=_yes_no(opt("owns_cores"), "owns_cores"),
            # Keys from the environment only: a secret on the command line would show in ps.
            curve_pair=curve.pair_from_env(),
            curve_server_key=os.environ.get(curve.ENV_SERVER_KEY, ""),
        )
    except (ValueError, json.JSONDecodeError) as err:
        p.error(str(err))
        raise  # p.error exits; this satisfies the type checker


def _safe_paths(config: ReplicaConfig) -> tuple[str, dict]:
    """The model path and options, checked against the model roots when the manager named them."""
    if config.model_path.startswith(model_roots.IMAGE_PREFIX):
        if os.environ.get(model_roots.IN_IMAGE_ENV) != "1":
            raise model_roots.UnsafeModelPath(f"model path {config.model_path!r} names a path inside a model "
                                              "image, and this replica does not run in one")
        return config.model_path[len(model_roots.IMAGE_PREFIX):], dict(config.model_opts)
    roots = model_roots.from_env()
    if roots is None:
        return config.model_path, dict(config.model_opts)
    path = model_roots.inside(config.model_path, roots) if config.model_path else ""
    return path, model_roots.check_options(config.model_opts, roots)


def report_load_error(model: str, err: BaseException) -> int:
    """Log why the model did not load, as a line the manager reads back, and give the exit status."""
    message = f"cannot load model {model!r}: {type(err).__name__}: {err}"
    log.error("%s", message)
    print(LOAD_ERROR_MARKER + json.dumps({"error": message}), file=sys.stderr, flush=True)
    return LOAD_FAILED_EXIT


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse flags/env, pin, load the model, serve until SIGTERM/SIGINT."""
    config = _parse_args(argv)
    try:
        cpus = pinning.pin_cpus(config.cpus) if config.cpus else pinning.allowed_cpus()
        device = pinning.select_gpu(config.gpu)
    except ContainerError as err:
        log.error("%s", err)
        return 2
    try:
        model_path, opts = _safe_paths(config)
        model = load_model(config.model, model_path=model_path, num_threads=len(cpus), gpu=device, **opts)
    except Exception as err:  # noqa: BLE001 - loading runs the model's code: any error is the model's
        return report_load_error(config.model, err)
    if config.cpus:
        pinning.limit_threads(len(cpus))  # again: the model may have imported torch or a BLAS
    ctx = zmq.Context()
    set_io_thread_policy(ctx)
    replica = Replica(config, model, ctx, cpus, num_threads=len(cpus) if config.cpus else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: replica.stop())
    log.info("replica %s serving %s:%s (cpus %s, gpu %s, spin %s) to %s", config.replica_id, config.name,
             config.version, pinning.format_cpus(cpus), config.gpu, replica.spin.effective.value, config.frontend)
    try:
        return replica.run()
    finally:
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
