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
from schooner.cli import add_version, setup_logging  # noqa: E402
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


def _flag(p: argparse.ArgumentParser, *names: str, **kw: object) -> None:
    """A kebab-case flag that also answers to Clipper's snake_case spelling (``--model-name``,
    ``--model_name``); the value lands under the snake_case name."""
    longs = [n for n in names if n.startswith("--")]
    spelled = list(names)
    for name in longs:
        alias = "--" + name[2:].replace("-", "_")
        if alias != name:
            spelled.append(alias)
    kw.setdefault("dest", longs[0][2:].replace("-", "_"))
    p.add_argument(*spelled, **kw)  # type: ignore[arg-type]


def parser() -> argparse.ArgumentParser:
    """The sweep argument parser (Clipper image-driver names; kebab-case, snake_case accepted)."""
    p = argparse.ArgumentParser(prog="schooner-driver", description=__doc__.splitlines()[0],
                                epilog="Every --kebab-case flag also answers to Clipper's --snake_case spelling.")
    add_version(p)
    _flag(p, "-m", "--model-name", required=True, choices=sorted(MODEL_INPUTS), metavar="MODEL",
          help=f"zoo model to serve: {', '.join(sorted(MODEL_INPUTS))}")
    _flag(p, "-d", "--duration-seconds", type=float, default=120.0,
          help="measurement time per configuration (also the bound on waiting for a steady state; default 120)")
    _flag(p, "-b", "--batch-sizes", type=int, nargs="+", default=[-1],
          help="batch sizes to sweep; -1 = adaptive (default -1)")
    _flag(p, "-r", "--num-replicas", type=int, nargs="+", default=[1], help="replica counts to sweep (default 1)")
    _flag(p, "-c", "--model-cpus", type=int, nargs="+", default=None,
          help="cores the replicas may use (default: every usable core but the frontend's)")
    _flag(p, "-p", "--cpus-per-replica-nums", type=int, nargs="+", default=[1],
          help="cores per replica to sweep (default 1)")
    _flag(p, "-g", "--model-gpus", type=int, nargs="*", default=[], help="GPU ids the replicas may use")
    _flag(p, "--slo-ms", type=float, default=100.0, help="latency objective in ms (default 100)")
    _flag(p, "-n", "--num-clients", "--concurrency", dest="concurrency", type=int, nargs="+", default=None,
          help="closed-loop load: concurrent clients, one level or several to sweep (Clipper's -n)")
    _flag(p, "--rate", type=float, nargs="+", default=None, help="open-loop load levels (queries per second)")
    _flag(p, "--arrival", choices=("constant", "poisson"), default="constant",
          help="open-loop arrivals (default constant)")
    _flag(p, "--warmup-s", type=float, default=5.0, help="load before measuring, seconds (default 5)")
    _flag(p, "--window-s", type=float, default=5.0, help="length of one logged window, seconds (default 5)")
    _flag(p, "--out", default="results", help="results directory (default results)")
    _flag(p, "--frontend", default="", help="HOST:PORT of a running frontend's ZMQ client port "
                                            "(default: start a deployment of our own)")
    _flag(p, "--management", default="", help="HOST:PORT of a running management service")
    _flag(p, "--backend", choices=BACKENDS, default="process", help="where replicas run (default process)")
    _flag(p, "--mode", choices=MODES, default="sweep", help="what to run (default sweep)")
    _flag(p, "--target-qps", type=float, default=None,
          help="the recommendation's throughput objective (queries per second)")
    _flag(p, "--seed", type=int, default=0, help="seed of inputs and Poisson arrivals (default 0)")
    _flag(p, "--model-opts", type=_json_obj, default=None,
          help='model options as JSON, e.g. \'{"a_ms": 5, "b_ms": 1}\'')
    _flag(p, "--count", type=int, default=3, help="mode load: models deployed at once (default 3)")
    _flag(p, "--repeat", type=int, default=3, help="mode repeated_scale_calls: scale up/down rounds (default 3)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _setup_logging(verbose: bool) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


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
        rp = argparse.ArgumentParser(prog="schooner-driver report", description="redraw table, plots, recommendation")
        rp.add_argument("dir", help="a results directory or results-<stamp>.json file")
        rp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
