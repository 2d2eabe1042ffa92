"""``schooner deploy NAME PATH``: serve a model file or directory with one command."""

from __future__ import annotations

import argparse
import json
import time

from schooner import defaults


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``deploy`` subcommand to ``schooner``'s subparsers."""
    p = sub.add_parser("deploy", help="upload a model, create its app, model and replicas, wait until it serves",
                       description="Serve the model at PATH as app NAME: upload it, register the app and the "
                                   "model version, link them, start the replicas and wait until they answer. "
                                   "The admin token comes from SCHOONER_ADMIN_TOKEN, SCHOONER_ADMIN_TOKEN_FILE "
                                   "or <state-dir>/admin-token.")
    p.add_argument("name", help="app and model name")
    p.add_argument("path", nargs="?", default="", help="model file or directory (a directory with model.py, "
                                                      "or one .joblib/.txt/.pt/.onnx/.cloudpickle file)")
    p.add_argument("--launcher", default="", help="sklearn, lightgbm, torchscript, onnx, python-closure, "
                                                  "model-dir, a zoo model, pkg.module:factory or an entry point "
                                                  "(default: from PATH's extension)")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument("--input-type", default="floats", help="ints, floats, doubles, bytes or strings (default floats)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="the app's latency objective (default 100)")
    p.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    p.add_argument("--cpus-per-replica", type=int, default=1, help="cores per replica (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="fixed batch size (default adaptive)")
    p.add_argument("--model-opts", default="", help="JSON object of options for the loader")
    p.add_argument("--no-upload", action="store_true", help="PATH is already in a model root of the service")
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the replicas (default 120)")
    p.add_argument("--state-dir", default=None, help="state dir of `schooner up`, where its admin-token is "
                                                     f"(default SCHOONER_STATE_DIR or {defaults.STATE_DIR})")
    p.add_argument("--management", default=None,
                   help=f"management URL (default http://{defaults.HOST}:{defaults.MANAGEMENT_PORT})")


def run(args: argparse.Namespace) -> int:
    """Deploy, print the replicas as JSON; exit 1 with the reason when it does not serve."""
    from management import admin_token  # noqa: PLC0415 - keeps `schooner --help` fast
    from management.client import AdminError, deploy  # noqa: PLC0415

    url = args.management or defaults.resolve(None, "management_url",
                                               f"http://{defaults.HOST}:{defaults.MANAGEMENT_PORT}")
    t0 = time.monotonic()
    try:
        opts = json.loads(args.model_opts) if args.model_opts else {}
        result = deploy(args.name, args.path, launcher=args.launcher, version=args.version,
                        input_type=args.input_type, slo_ms=args.slo_ms, replicas=args.replicas,
                        cpus_per_replica=args.cpus_per_replica, model_opts=opts, batch_size=args.batch_size,
                        upload=not args.no_upload, wait_s=args.wait_s, management_url=url,
                        token=admin_token.discover(args.state_dir))
    except (AdminError, ValueError, OSError) as err:
        print(f"schooner deploy {args.name}: {err}")
        return 1
    print(json.dumps({"app": result.app, "model": result.model, "version": result.version,
                      "launcher": result.launcher, "model_data_path": result.model_data_path,
                      "replicas": [r.get("replica_id") for r in result.replicas],
                      "seconds": round(time.monotonic() - t0, 2),
                      "query": f"POST /{result.app}/predict {{\"input\": [...]}}"}, indent=2))
    return 0
