"""Format loaders: serve a saved model file with no code of your own.

- ``sklearn``: a joblib/pickle file of a fitted estimator or pipeline;
  ``predict_proba`` when it has one, else ``predict`` (option ``method`` picks).
- ``lightgbm``: a LightGBM model text file (``booster.save_model``).
- ``torchscript``: a ``torch.jit.save`` file, on CPU or the replica's GPU.
- ``onnx``: an ONNX model run by onnxruntime (``pip install schooner[onnx]``);
  option ``output`` names the output to return (default ``probabilities`` when
  the model has it, as skl2onnx classifiers do, else the first).
- ``python-closure``: a cloudpickled function of a batch (a list of inputs)
  returning one output per input, as Clipper's ``deploy_python_closure``.

``model_path`` is the file, or a directory holding exactly one file of the
format (by extension). Each loader sets its library's thread count to the
replica's cores and makes one call per batch. Outputs are numpy arrays whose
first axis is the batch (numbers), or lists (strings, mixed items).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from schooner.types import InputType

log = logging.getLogger(__name__)

EXTENSIONS = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "lightgbm": (".txt", ".lgb", ".lightgbm"),
    "torchscript": (".pt", ".pth", ".torchscript", ".ts"),
    "onnx": (".onnx",),
    "python-closure": (".cloudpickle", ".closure", ".pkl"),
}


def model_file(fmt: str, model_path: str) -> str:
    """The model file of ``fmt`` that ``model_path`` names (a file, or a directory with one such file)."""
    if not model_path:
        raise ValueError(f"{fmt}: model_data_path must name the model file (or its directory)")
    if os.path.isfile(model_path):
        return model_path
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"{fmt}: no model file or directory at {model_path!r}")
    found = sorted(f for f in os.listdir(model_path)
                   if f.endswith(EXTENSIONS[fmt]) and os.path.isfile(os.path.join(model_path, f)))
    if len(found) != 1:
        raise ValueError(f"{fmt}: {model_path!r} must hold exactly one {'/'.join(EXTENSIONS[fmt])} file, "
                         f"found {found or 'none'}")
    return os.path.join(model_path, found[0])


def outputs(out: Any, n: int) -> np.ndarray | list:
    """A model's batch output as the runtime sends it: a numeric array, or a list of items."""
    if isinstance(out, np.ndarray):
        if out.ndim == 0:
            raise ValueError(f"model returned a scalar for a batch of {n}")
        if out.dtype.kind in "biuf":
            return out
        return [_item(x) for x in out]
    if isinstance(out, (list, tuple)):
        items = [_item(x) for x in out]
        if items and all(isinstance(x, np.ndarray) and x.dtype.kind in "biuf" and x.shape == items[0].shape
                         and x.dtype == items[0].dtype for x in items):
            return np.stack(items)
        return items
    raise ValueError(f"model returned a {type(out).__name__}; expected an array or a list of outputs")


def _item(x: Any) -> Any:
    if isinstance(x, (str, bytes)):
        return x
    if isinstance(x, np.str_):
        return str(x)
    if isinstance(x, np.bytes_):
        return bytes(x)
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        return str(x)
    return a


def stack(inputs: Sequence[Any], fmt: str, dtype: Any = None) -> np.ndarray:
    """A batch of numeric inputs as one array [n, *shape]; ValueError naming a mismatched input."""
    arrays = [x if isinstance(x, np.ndarray) else np.asarray(x) for x in inputs]
    first = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != first:
            raise ValueError(f"{fmt}: input {i} has shape {list(a.shape)}, input 0 has {list(first)}; "
                             "every input of a batch must have the same shape")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{fmt}: input {i} must be numbers, got dtype {a.dtype}")
    batch = np.stack(arrays)
    return batch if dtype is None else batch.astype(dtype, copy=False)


class FormatModel:
    """A model served by a format loader: ``predict`` is one call of ``run`` on the stacked batch."""

    def __init__(self, name: str, run: Callable[[Any], Any], input_shape: list[int] | None = None,
                 numeric: bool = True, dtype: Any = None) -> None:
        self.name = name
        self.input_type = InputType.FLOATS
        self.input_shape = input_shape
        self._run = run
        self._numeric = numeric
        self._dtype = dtype

    def predict(self, inputs: Sequence[Any]) -> np.ndarray | list:
        """One call of the model on the whole batch."""
        n = len(inputs)
        if n == 0:
            return []
        if self._numeric and self.input_shape is not None:
            # The frontend checks element counts only: bring every input to the declared shape.
            shape = tuple(self.input_shape)
            inputs = [x.reshape(shape) if isinstance(x, np.ndarray) and x.shape != shape
                      and x.size == int(np.prod(shape)) else x for x in inputs]
        batch = stack(inputs, self.name, self._dtype) if self._numeric else list(inputs)
        return outputs(self._run(batch), n)


def _no_gpu(fmt: str, gpu: int | None) -> None:
    if gpu is not None:
        raise ValueError(f"{fmt} runs on CPU only; got gpu={gpu!r}")


def _no_opts(fmt: str, opts: dict) -> None:
    if opts:
        raise ValueError(f"{fmt}: unknown model options {sorted(opts)}")


def load_sklearn(model_path: str = "", num_threads: int = 1, gpu: int | None = None, method: str = "",
                 **opts: Any) -> FormatModel:
    """A joblib/pickle file of a fitted scikit-learn estimator or pipeline."""
    import joblib
    from threadpoolctl import ThreadpoolController

    _no_gpu("sklearn", gpu)
    _no_opts("sklearn", opts)
    path = model_file("sklearn", model_path)
    try:
        est = joblib.load(path)
    except Exception as err:  # unpickling raises many types for a bad file
        raise ValueError(f"sklearn: cannot read an estimator from {path!r}: {type(err).__name__}: {err}") from err
    method = method or ("predict_proba" if hasattr(est, "predict_proba") else "predict")
    fn = getattr(est, method, None)
    if not callable(fn):
        raise ValueError(f"sklearn: {type(est).__name__} from {path!r} has no method {method!r}")
    # Once, for the process (predict runs on this thread): entering a limit per batch costs milliseconds.
    limiter = ThreadpoolController().limit(limits=num_threads)
    width = getattr(est, "n_features_in_", None)

    def run(batch: np.ndarray) -> Any:
        return np.asarray(fn(batch))

    run.limiter = limiter  # type: ignore[attr-defined] - kept alive with the model

    log.info("sklearn: %s.%s from %s, %d thread(s)", type(est).__name__, method, path, num_threads)
    return FormatModel("sklearn", run, [int(width)] if width is not None else None)


def load_lightgbm(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                  **opts: Any) -> FormatModel:
    """A LightGBM model text file; raw predictions (probabilities for a classifier)."""
    import lightgbm as lgb

    _no_gpu("lightgbm", gpu)
    _no_opts("lightgbm", opts)
    path = model_file("lightgbm", model_path)
    try:
        booster = lgb.Booster(model_file=path)
    except lgb.basic.LightGBMError as err:
        raise ValueError(f"lightgbm: {path!r} is not a LightGBM model file: {err}") from err

    def run(batch: np.ndarray) -> Any:
        flat = batch.reshape(len(batch), -1)
        return np.asarray(booster.predict(flat, num_threads=num_threads))

    return FormatModel("lightgbm", run, [int(booster.num_feature())], dtype=np.float64)


def load_torchscript(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                     input_shape: list[int] | None = None, **opts: Any) -> FormatModel:
    """A TorchScript file (``torch.jit.save``); inputs stacked to one float32 tensor, on CPU or GPU."""
    import torch

    _no_opts("torchscript", opts)
    path = model_file("torchscript", model_path)
    if gpu is not None and not (torch.cuda.is_available() and 0 <= gpu < torch.cuda.device_count()):
        raise RuntimeError(f"torchscript: gpu {gpu} was asked for but only {torch.cuda.device_count()} "
                           "CUDA device(s) are visible")
    device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
    torch.set_num_threads(num_threads)
    try:
        net = torch.jit.load(path, map_location=device).eval()
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"torchscript: cannot load {path!r}: {type(err).__name__}: {err}") from err

    def run(batch: np.ndarray) -> Any:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        with torch.inference_mode():
            out = net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()

    return FormatModel("torchscript", run, list(input_shape) if input_shape else None)


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def load_onnx(model_path: str = "", num_threads: int = 1, gpu: int | None = None, output: str = "",
              **opts: Any) -> FormatModel:
    """An ONNX model run by onnxruntime with ``num_threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the onnx loader needs onnxruntime: pip install schooner[onnx]") from err
    _no_opts("onnx", opts)
    path = model_file("onnx", model_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if gpu is not None:
        providers = [("CUDAExecutionProvider", {"device_id": gpu})] + providers
    try:
        session = ort.InferenceSession(path, sess_options=so, providers=providers)
    except Exception as err:  # onnxruntime raises its own types for a bad file
        raise ValueError(f"onnx: cannot load {path!r}: {type(err).__name__}: {err}") from err
    inp = session.get_inputs()[0]
    names = [o.name for o in session.get_outputs()]
    if output and output not in names:
        raise ValueError(f"onnx: {path!r} has no output {output!r}; it has {names}")
    chosen = output or ("probabilities" if "probabilities" in names else names[0])
    dims = inp.shape[1:] if isinstance(inp.shape, list) else []
    shape = [int(d) for d in dims] if dims and all(isinstance(d, int) and d > 0 for d in dims) else None

    def run(batch: np.ndarray) -> Any:
        out = session.run([chosen], {inp.name: batch})[0]
        if isinstance(out, list) and out and isinstance(out[0], dict):  # ZipMap: one {label: p} per row
            keys = sorted(out[0])
            return np.asarray([[row[k] for k in keys] for row in out], dtype=np.float32)
        return np.asarray(out)

    return FormatModel("onnx", run, shape, dtype=_ORT_DTYPES.get(inp.type, np.float32))


def load_python_closure(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                        **opts: Any) -> FormatModel:
    """A cloudpickled function ``f(batch: list) -> list`` of one output per input."""
    import cloudpickle

    _no_opts("python-closure", opts)
    path = model_file("python-closure", model_path)
    try:
        with open(path, "rb") as fh:
            fn = cloudpickle.load(fh)
    except Exception as err:  # unpickling raises many types for a bad file
        raise ValueError(f"python-closure: cannot read a function from {path!r}: "
                         f"{type(err).__name__}: {err}") from err
    if not callable(fn):
        raise ValueError(f"python-closure: {path!r} holds a {type(fn).__name__}, not a function")
    from containers import pinning

    pinning.limit_threads(num_threads)
    return FormatModel("python-closure", fn, numeric=False)


LOADERS: dict[str, Callable[..., Any]] = {
    "sklearn": load_sklearn,
    "lightgbm": load_lightgbm,
    "torchscript": load_torchscript,
    "onnx": load_onnx,
    "python-closure": load_python_closure,
}


def as_model(obj: Any, name: str) -> Any:
    """A plugin factory's result as a Model: itself if it has ``predict``, a wrapper for a plain callable."""
    if callable(getattr(obj, "predict", None)):
        return obj
    if callable(obj):
        return FormatModel(name, obj, numeric=False)
    raise TypeError(f"{name}: the factory returned a {type(obj).__name__}, not a model (an object with "
                    "predict(inputs) or a function of a batch)")
