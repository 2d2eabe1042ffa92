"""Small saved models of every format, and their in-process outputs, for the plugin tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

WIDTH = 4
ROWS = np.random.default_rng(1).standard_normal((8, WIDTH)).astype(np.float32)


def _iris_like() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, WIDTH)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    return x, y


def sklearn_pipeline(out: Path) -> tuple[Path, np.ndarray]:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _iris_like()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(x, y)
    path = out / "pipe.joblib"
    joblib.dump(pipe, path)
    return path, pipe.predict_proba(ROWS)


def lightgbm_text(out: Path) -> tuple[Path, np.ndarray]:
    import lightgbm as lgb

    x, y = _iris_like()
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1,
                         "min_data_in_leaf": 5}, lgb.Dataset(x, label=y), num_boost_round=5)
    path = out / "model.txt"
    booster.save_model(str(path))
    return path, booster.predict(ROWS.astype(np.float64))


def torchscript_module(out: Path) -> tuple[Path, np.ndarray]:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(WIDTH, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    scripted = torch.jit.script(net)
    path = out / "net.pt"
    scripted.save(str(path))
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(ROWS)).numpy()
    return path, expected


def onnx_model(out: Path) -> tuple[Path, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = _iris_like()
    clf = LogisticRegression(max_iter=200).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=15)
    path = out / "clf.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, clf.predict_proba(ROWS)


def closure(out: Path) -> tuple[Path, list]:
    import cloudpickle

    scale = 3.0

    def predict(batch: list) -> list:
        return [str(float(np.sum(x)) * scale) for x in batch]

    path = out / "fn.cloudpickle"
    path.write_bytes(cloudpickle.dumps(predict))
    return path, predict(list(ROWS))


MODEL_PY = textwrap.dedent('''
    import os
    import numpy as np

    class Doubler:
        name = "doubler"
        input_shape = None

        def __init__(self, offset):
            self.offset = offset

        def predict(self, inputs):
            return np.stack([2 * np.asarray(x, dtype=np.float32) + self.offset for x in inputs])

    def load(model_path, num_threads=1, gpu=None, **opts):
        with open(os.path.join(model_path, "offset.txt")) as fh:
            return Doubler(float(fh.read()))
''')


def model_dir(out: Path) -> tuple[Path, np.ndarray]:
    d = out / "doubler"
    d.mkdir()
    (d / "model.py").write_text(MODEL_PY)
    (d / "offset.txt").write_text("0.5")
    return d, 2 * ROWS + 0.5


def entry_point_dist(site: Path) -> str:
    """A tiny installed distribution with a ``schooner.models`` entry point ``tripler``; its name."""
    pkg = site / "tripler_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np

        def load(model_path="", num_threads=1, gpu=None, **opts):
            return lambda batch: np.stack([3 * np.asarray(x, dtype=np.float32) for x in batch])
    '''))
    info = site / "tripler_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tripler-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[schooner.models]\ntripler = tripler_pkg:load\n")
    return "tripler"
