"""Build the classic-model artifacts: ``python -m containers.build_models --out DIR [--models ...]``.

Writes ``lgbm.txt`` and ``<name>.joblib`` into ``--out`` (default
``~/.schooner/models``, or ``$SCHOONER_MODEL_DIR``); a replica given that
directory (or the file) as ``--model-path`` serves it. Prints JSON: one entry
per model with its path, size and training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from schooner.cli import add_version, setup_logging
from containers.models.classic import FAMILIES, MODEL_NAMES, TrainParams, build_artifact
from schooner import defaults


def build(out: str, models: list[str], params: TrainParams, num_threads: int) -> list[dict]:
    """Train and save each model into ``out``; what was written."""
    os.makedirs(out, exist_ok=True)
    return [build_artifact(name, os.path.join(out, FAMILIES[name].filename), params, num_threads)
            for name in models]


def build_parser() -> argparse.ArgumentParser:
    """The ``schooner-build-models`` argument parser."""
    parser = argparse.ArgumentParser(prog="schooner-build-models", description=__doc__.splitlines()[0])
    add_version(parser)
    parser.add_argument("--out", default=None, help="output directory (default ~/.schooner/models)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                        help="models to train and save (default: all)")
    parser.add_argument("--n-samples", type=int, default=TrainParams.n_samples,
                        help=f"training samples (default {TrainParams.n_samples})")
    parser.add_argument("--n-classes", type=int, default=TrainParams.n_classes,
                        help=f"classes (default {TrainParams.n_classes})")
    parser.add_argument("--seed", type=int, default=TrainParams.seed, help=f"seed (default {TrainParams.seed})")
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1,
                        help="training threads (default: every core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build, print JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("INFO")
    out = os.path.expanduser(defaults.resolve(args.out, "model_dir", defaults.MODEL_DIR))
    try:
        params = TrainParams(n_samples=args.n_samples, n_classes=args.n_classes, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    built = build(out, args.models, params, max(1, args.num_threads))
    print(json.dumps({"out": out, "models": built}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
