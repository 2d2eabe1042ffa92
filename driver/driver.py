"""The driver CLI: sweep deployment configurations, write results, plots and a recommendation.

``python driver/driver.py -m MODEL [...]`` (Clipper image-driver flags), ``python -m driver``,
or ``python -m driver report DIR`` to redraw from saved results.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from driver import errors, results  # noqa: E402
from driver.validate import BACKENDS, MODEL_INPUTS, MODES, Machine, build_spec  # noqa: E402

log = logging.getLogger("driver")

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130


def _json_obj(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    """The sweep argument parser (Clipper image-driver compatible names)."""
    p = argparse.ArgumentParser(prog="driver", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model_name", required=True, choices=sorted(MODEL_INPUTS))
    p.add_argument("-d", "--duration_seconds", type=float, default=120.0,
                   help="measurement time per configuration (also the bound on waiting for a steady state)")
    p.add_argument("-b", "--batch_sizes", type=int, nargs="+", default=[-1], help="-1 = adaptive")
    p.add_argument("-r", "--num_replicas", type=int, nargs="+", default=[1])
    p.add_argument("-c", "--model_cpus", type=int, nargs="+", default=None,
                   help="cores the replicas may use (default: every usable core but the driver's)")
    p.add_argument("-p", "--cpus_per_replica_nums", type=int, nargs="+", default=[1])
    p.add_argument("-g", "--model_gpus", type=int, nargs="*", default=[])
    p.add_argument("--slo_ms", type=float, default=100.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help="closed-loop load levels")
    p.add_argument("--rate", type=float, nargs="+", default=None, help="open-loop load levels (qps)")
    p.add_argument("--arrival", choices=("constant", "poisson"), default="constant")
    p.add_argument("--warmup_s", type=float, default=5.0)
    p.add_argument("--window_s", type=float, default=5.0)
    p.add_argument("--out", default="results")
    p.add_argument("--frontend", default="", help="HOST:PORT of a running frontend's ZMQ client port")
    p.add_argument("--management", default="", help="HOST:PORT of a running management service")
    p.add_argument("--backend", choices=BACKENDS, default="process")
    p.add_argument("--mode", choices=MODES, default="sweep")
    p.add_argument("--target_qps", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_opts", type=_json_obj, default=None, help='JSON, e.g. \'{"a_ms": 5, "b_ms": 1}\'')
    p.add_argument("--count", type=int, default=3, help="mode load: models deployed at once")
    p.add_argument("--repeat", type=int, default=3, help="mode repeated_scale_calls: scale up/down rounds")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def report(path: str) -> int:
    """Redraw the table, plots and recommendation of a saved results file or directory."""
    from driver.plots import draw_all
    from driver.recommend import describe, recommend

    doc = results.load(path)
    doc["recommendation"] = recommend(doc["runs"], doc["slo_ms"], doc.get("target_qps"))
    file = results.find(path)
    name_stamp = file.stem.removeprefix("results-")
    print(results.table(doc))
    for line in describe(doc["recommendation"]):
        print(line)
    for png in draw_all(doc, file.parent, name_stamp):
        print(f"plot: {png}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``schooner-driver`` and ``python driver/driver.py``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        rp = argparse.ArgumentParser(prog="driver report", description="redraw table, plots, recommendation")
        rp.add_argument("dir")
        rp.add_argument("-v", "--verbose", action="store_true")
        ra = rp.parse_args(argv[1:])
        _setup_logging(ra.verbose)
        try:
            return report(ra.dir)
        except errors.ResultsError as err:
            print(f"driver: {err}", file=sys.stderr)
            return EXIT_REFUSED
    args = parser().parse_args(argv)
    _setup_logging(args.verbose)
    machine = Machine.detect()
    try:
        spec = build_spec(args, machine)
    except errors.ImpossibleSweep as err:
        print(f"driver: refusing to start: {err}", file=sys.stderr)
        return EXIT_REFUSED
    from driver.modes import run  # imports the client and the stack only once the sweep is accepted

    try:
        return run(spec, machine, vars(args))
    except errors.DriverError as err:
        log.error("%s", err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("interrupted; results measured so far are in %s", spec.out_dir)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
