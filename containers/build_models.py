"""Build the classic-model artifacts: ``python -m containers.build_models --out DIR [--models ...]``.

Writes ``lgbm.txt`` and ``<name>.joblib`` into ``--out`` (default
``~/.schooner/models``, or ``$SCHOONER_MODEL_DIR``); a replica given that
directory (or the file) as ``--model-path`` serves it. Prints JSON: one entry
per model with its path, size and training time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from containers.models.classic import FAMILIES, MODEL_NAMES, TrainParams, build_artifact
from schooner import defaults


def build(out: str, models: list[str], params: TrainParams, num_threads: int) -> list[dict]:
    """Train and save each model into ``out``; what was written."""
    os.makedirs(out, exist_ok=True)
    return [build_artifact(name, os.path.join(out, FAMILIES[name].filename), params, num_threads)
            for name in models]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output directory (default ~/.schooner/models)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--n-samples", type=int, default=TrainParams.n_samples)
    parser.add_argument("--n-classes", type=int, default=TrainParams.n_classes)
    parser.add_argument("--seed", type=int, default=TrainParams.seed)
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
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
