"""Classic models of the zoo: LightGBM, KernelPCA+SVM, kernel SVM and elastic-net logistic regression.

They stand in for the classifiers Clipper's benchmarks put behind a CNN: each
takes one flat float vector of features (2048 for ``lgbm``, Inception's width;
4096 for the others, VGG's fc7 width) and returns float32 [n, n_classes]:

- ``lgbm``: class probabilities of a multiclass LightGBM booster;
- ``kpca-svm``: KernelPCA(rbf) then SVC(rbf), one-vs-rest decision function;
- ``kernel-svm``: StandardScaler then SVC(rbf), one-vs-rest decision function;
- ``elastic-net``: StandardScaler then LogisticRegression(elastic-net, saga),
  class probabilities.

They are trained on synthetic features (a fixed-seed Gaussian mixture), sized so
that prediction costs what a real one does (every training point is a support
vector; hundreds of trees). Artifacts: ``lgbm.txt`` (LightGBM model text) and
``<name>.joblib`` (a dict holding the fitted sklearn pipeline), written by
``python -m containers.build_models``. ``model_path`` is such a file or a
directory holding it. With no ``model_path`` the model is trained in-process
and cached under ``defaults.MODEL_CACHE_DIR`` (or ``cache_dir=``), keyed by the
model, its training options and the library version, so a second load is fast.

Options (``**opts``): ``n_samples``, ``n_classes``, ``seed`` (training) and
``cache_dir``; others are refused.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from containers.models._validate import flat_float_batch
from schooner import defaults
from schooner.types import InputType

log = logging.getLogger(__name__)

_TRAIN_OPTS = ("n_samples", "n_classes", "seed")
_LGBM_ROWS_PER_THREAD = 32
_ARTIFACT_FORMAT = 2  # bump when training changes, so stale cached models are not reused


@dataclass(frozen=True)
class TrainParams:
    """How a classic model's synthetic training set is drawn."""

    n_samples: int = 1000
    n_classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_samples", "n_classes", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.n_samples < 4 * self.n_classes:
            raise ValueError(f"n_samples must be >= 4 * n_classes ({4 * self.n_classes}), got {self.n_samples}")


def synthetic_features(width: int, params: TrainParams) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed Gaussian mixture: float32 features [n_samples, width] and int labels."""
    rng = np.random.default_rng(params.seed)
    centers = rng.standard_normal((params.n_classes, width)).astype(np.float32)
    y = np.arange(params.n_samples) % params.n_classes
    # Overlapping classes (centers small against the noise), as real features are.
    x = 0.25 * centers[y] + rng.standard_normal((params.n_samples, width), dtype=np.float32)
    return x, y


# ---- training -------------------------------------------------------------------------------------------

def _train_lgbm(x: np.ndarray, y: np.ndarray, params: TrainParams, num_threads: int) -> Any:
    import lightgbm as lgb

    booster_params = {
        "objective": "multiclass", "num_class": params.n_classes, "num_leaves": 15,
        # Coarse bins and few features per tree keep training to seconds on two cores.
        "learning_rate": 0.1, "min_data_in_leaf": 5, "feature_fraction": 0.2, "max_bin": 31,
        "num_threads": num_threads, "deterministic": True, "force_row_wise": True,
        "seed": params.seed, "verbose": -1,
    }
    return lgb.train(booster_params, lgb.Dataset(x, label=y), num_boost_round=50)


def _elastic_net(params: TrainParams) -> Any:
    import sklearn
    from sklearn.linear_model import LogisticRegression

    kwargs = dict(solver="saga", l1_ratio=0.5, C=0.1, max_iter=30, tol=1e-3, random_state=params.seed)
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) < (1, 8):  # before 1.8 the penalty had to be named; since, l1_ratio says it
        kwargs["penalty"] = "elasticnet"
    return LogisticRegression(**kwargs)


def _train_sklearn(name: str, x: np.ndarray, y: np.ndarray, params: TrainParams) -> Any:
    from sklearn.decomposition import KernelPCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "kpca-svm":
        pipe = make_pipeline(
            KernelPCA(n_components=min(128, params.n_samples - 1), kernel="rbf", random_state=params.seed),
            SVC(kernel="rbf", C=1.0, gamma="scale", decision_function_shape="ovr"))
    elif name == "kernel-svm":
        pipe = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale",
                                                   decision_function_shape="ovr"))
    else:
        pipe = make_pipeline(StandardScaler(), _elastic_net(params))
    with warnings.catch_warnings():
        # A few saga epochs are enough for a benchmark model; full convergence would take minutes.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # float64, as sklearn computes: float32 would make every rbf kernel call upcast the training set.
        return pipe.fit(x.astype(np.float64), y)


# ---- the models -----------------------------------------------------------------------------------------

class LgbmModel:
    """A LightGBM multiclass booster: class probabilities float32 [n, n_classes]."""

    input_type = InputType.FLOATS

    def __init__(self, booster: Any, num_threads: int) -> None:
        self.name = "lgbm"
        self.width = int(booster.num_feature())
        self.input_shape: list[int] | None = [self.width]
        self.n_classes = int(booster.num_model_per_iteration())
        self._booster = booster
        self._num_threads = num_threads

    def predict(self, inputs: Sequence[Any]) -> np.ndarray:
        """Class probabilities for a batch of feature vectors."""
        x = flat_float_batch(inputs, self.width, self.name)
        if len(x) == 0:
            return np.empty((0, self.n_classes), dtype=np.float32)
        # Rows are cheap (microseconds): below ~32 rows per thread the OpenMP fork/join costs more
        # than it saves, and on a busy core a waiting thread stalls the whole batch.
        threads = max(1, min(self._num_threads, len(x) // _LGBM_ROWS_PER_THREAD))
        out = self._booster.predict(x, num_threads=threads)
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)


class SklearnModel:
    """A fitted sklearn pipeline: decision function (SVMs) or probabilities, float32 [n, n_classes].

    A scaler-then-logistic-regression pipeline (``elastic-net``) is scored as
    one matrix product with the scaler folded into the weights, then a softmax:
    sklearn's own ``predict_proba`` spent most of a batch checking its input
    (a batch of 20 rows of 4,096 floats: 2.6 ms, against 0.44 ms folded). The
    folded scorer is kept only when it agrees with the pipeline on a probe batch
    at load, so a pipeline sklearn scores otherwise keeps sklearn's path.
    """

    input_type = InputType.FLOATS

    def __init__(self, name: str, pipeline: Any, num_threads: int) -> None:
        from threadpoolctl import ThreadpoolController

        self.name = name
        self.width = int(pipeline.n_features_in_)
        self.input_shape: list[int] | None = [self.width]
        self.n_classes = len(pipeline.classes_)
        self._pipeline = pipeline
        self._method = pipeline.predict_proba if name == "elastic-net" else pipeline.decision_function
        self._num_threads = num_threads
        # Found once: looking the BLAS libraries up again on each batch costs milliseconds. Entering a
        # limit costs ~50 µs a batch, so it is skipped when every pool already runs within it (a
        # replica pinned to its cores starts its BLAS and OpenMP pools at that many threads).
        self._threadpools = ThreadpoolController()
        self._limit = any(pool["num_threads"] > num_threads for pool in self._threadpools.info())
        self._folded = _fold_scaled_logistic(pipeline) if name == "elastic-net" else None
        if self._folded is not None and not self._folded_agrees():
            log.info("%s: the folded scorer disagrees with the pipeline; scoring with sklearn", name)
            self._folded = None

    def predict(self, inputs: Sequence[Any]) -> np.ndarray:
        """Scores for a batch of feature vectors."""
        x = flat_float_batch(inputs, self.width, self.name)
        if len(x) == 0:
            return np.empty((0, self.n_classes), dtype=np.float32)
        if not self._limit:
            return self._score(x)
        with self._threadpools.limit(limits=self._num_threads):
            return self._score(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        if self._folded is not None:
            return _softmax_scores(x, *self._folded)
        out = self._method(x.astype(np.float64))
        return np.asarray(out, dtype=np.float32).reshape(len(x), self.n_classes)

    def _folded_agrees(self) -> bool:
        assert self._folded is not None
        probe = np.random.default_rng(0).standard_normal((4, self.width)).astype(np.float32)
        want = np.asarray(self._method(probe.astype(np.float64)), dtype=np.float64)
        got = _softmax_scores(probe, *self._folded)
        return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-6))


def _fold_scaled_logistic(pipeline: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights [width, classes], bias [classes]) of StandardScaler then multiclass LogisticRegression
    as one affine map; None for any other pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    steps = [step for _, step in getattr(pipeline, "steps", [])]
    if len(steps) != 2 or type(steps[0]) is not StandardScaler or type(steps[1]) is not LogisticRegression:
        return None
    scaler, lr = steps
    coef = np.asarray(lr.coef_, dtype=np.float64)
    if coef.shape[0] < 3:  # binary: a sigmoid of one score, not a softmax
        return None
    mean = scaler.mean_ if scaler.with_mean else np.zeros(coef.shape[1])
    scale = scaler.scale_ if scaler.with_std else np.ones(coef.shape[1])
    weights = coef / scale
    return np.ascontiguousarray(weights.T), np.asarray(lr.intercept_, dtype=np.float64) - weights @ mean


def _softmax_scores(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax of ``x @ weights + bias`` (float64), as float32 [n, classes]."""
    z = x.astype(np.float64) @ weights
    z += bias
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


@dataclass(frozen=True)
class _Family:
    width: int
    filename: str


FAMILIES = {
    "lgbm": _Family(2048, "lgbm.txt"),
    "kpca-svm": _Family(4096, "kpca-svm.joblib"),
    "kernel-svm": _Family(4096, "kernel-svm.joblib"),
    "elastic-net": _Family(4096, "elastic-net.joblib"),
}
MODEL_NAMES = tuple(FAMILIES)


# ---- artifacts ------------------------------------------------------------------------------------------

def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same directory, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; replicas in containers run as other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_artifact(name: str, path: str, params: TrainParams = TrainParams(), num_threads: int = 1) -> dict:
    """Train ``name`` on synthetic features and save it to ``path``; what was written, with timings."""
    family = _family(name)
    t0 = time.monotonic()
    x, y = synthetic_features(family.width, params)
    t1 = time.monotonic()
    if name == "lgbm":
        booster = _train_lgbm(x, y, params, num_threads)
        _atomic_write(path, lambda tmp: booster.save_model(tmp))
    else:
        import joblib
        import sklearn

        pipe = _train_sklearn(name, x, y, params)
        blob = {"model": name, "pipeline": pipe, "params": asdict(params), "sklearn": sklearn.__version__}
        _atomic_write(path, lambda tmp: joblib.dump(blob, tmp))
    t2 = time.monotonic()
    return {"model": name, "path": path, "bytes": os.path.getsize(path), "width": family.width,
            "params": asdict(params), "data_s": round(t1 - t0, 3), "train_s": round(t2 - t1, 3)}


def _family(name: str) -> _Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown classic model {name!r}; known: {', '.join(MODEL_NAMES)}") from None


def _read_artifact(name: str, path: str, num_threads: int) -> LgbmModel | SklearnModel:
    if name == "lgbm":
        import lightgbm as lgb

        try:
            booster = lgb.Booster(model_file=path)
        except lgb.basic.LightGBMError as err:
            raise ValueError(f"lgbm: {path!r} is not a LightGBM model file: {err}") from err
        return LgbmModel(booster, num_threads)
    import joblib

    try:
        blob = joblib.load(path)
    except Exception as err:  # unpickling raises many types for a bad file
        raise ValueError(f"{name}: cannot read a model from {path!r}: {err}") from err
    if not isinstance(blob, dict) or blob.get("model") != name:
        got = blob.get("model") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{name}: {path!r} holds a {got!r} model, not {name!r}")
    return SklearnModel(name, blob["pipeline"], num_threads)


def _cache_path(name: str, params: TrainParams, cache_dir: str) -> str:
    if name == "lgbm":
        import lightgbm as lib
    else:
        import sklearn as lib
    family = _family(name)
    stem, ext = os.path.splitext(family.filename)
    key = f"n{params.n_samples}-c{params.n_classes}-s{params.seed}-v{lib.__version__}-f{_ARTIFACT_FORMAT}"
    return os.path.join(cache_dir, f"{stem}-{key}{ext}")


def load_classic(name: str, model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                 **opts: Any) -> LgbmModel | SklearnModel:
    """Load classic model ``name`` from ``model_path`` (file or directory), or train and cache it."""
    family = _family(name)
    unknown = sorted(set(opts) - set(_TRAIN_OPTS) - {"cache_dir"})
    if unknown:
        raise ValueError(f"{name}: unknown model options {unknown}; known: {[*_TRAIN_OPTS, 'cache_dir']}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    if gpu is not None:
        raise ValueError(f"{name} runs on CPU only; got gpu={gpu!r}")
    if model_path:
        path = os.path.join(model_path, family.filename) if os.path.isdir(model_path) else model_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no model file at {path!r} (build one with "
                                    f"`python -m containers.build_models --out DIR`)")
    else:
        params = TrainParams(**{k: opts[k] for k in _TRAIN_OPTS if k in opts})
        cache_dir = opts.get("cache_dir") or defaults.resolve(None, "model_cache_dir", defaults.MODEL_CACHE_DIR)
        path = _cache_path(name, params, cache_dir)
        if not os.path.isfile(path):
            info = build_artifact(name, path, params, num_threads)
            log.info("trained %s in %.1f s, cached at %s", name, info["train_s"], path)
    model = _read_artifact(name, path, num_threads)
    log.info("loaded %s from %s with %d thread(s)", name, path, num_threads)
    return model


def load_lgbm(model_path: str = "", num_threads: int = 1, gpu: int | None = None, **opts: Any) -> LgbmModel:
    """LightGBM on 2048 features: class probabilities."""
    return load_classic("lgbm", model_path, num_threads, gpu, **opts)


def load_kpca_svm(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                  **opts: Any) -> SklearnModel:
    """KernelPCA(rbf) + SVC(rbf) on 4096 features: one-vs-rest decision function."""
    return load_classic("kpca-svm", model_path, num_threads, gpu, **opts)


def load_kernel_svm(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                    **opts: Any) -> SklearnModel:
    """StandardScaler + SVC(rbf) on 4096 features: one-vs-rest decision function."""
    return load_classic("kernel-svm", model_path, num_threads, gpu, **opts)


def load_elastic_net(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                     **opts: Any) -> SklearnModel:
    """StandardScaler + elastic-net LogisticRegression on 4096 features: class probabilities."""
    return load_classic("elastic-net", model_path, num_threads, gpu, **opts)
