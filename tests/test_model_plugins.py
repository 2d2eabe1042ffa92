"""Model plugins in-process: launchers resolve (or say what was tried), format loaders serve saved models,
paths outside the model roots are refused."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import model_artifacts as art
from containers.errors import ModelLoadError, UnknownModel
from containers.models import find_plugin, load_model
from schooner import model_roots


@pytest.mark.parametrize("make,launcher", [
    (art.sklearn_pipeline, "sklearn"), (art.lightgbm_text, "lightgbm"), (art.onnx_model, "onnx"),
    (art.model_dir, "model-dir"),
])
def test_format_loader_gives_the_outputs_of_the_model_in_process(tmp_path, make, launcher):
    path, expected = make(tmp_path)
    model = load_model(launcher, model_path=str(path), num_threads=1)
    got = model.predict(list(art.ROWS))
    assert np.allclose(np.asarray(got, dtype=np.float64), expected, atol=1e-5)


@pytest.mark.torch
def test_torchscript_loader_gives_the_modules_outputs(tmp_path):
    path, expected = art.torchscript_module(tmp_path)
    model = load_model("torchscript", model_path=str(path))
    assert np.allclose(model.predict(list(art.ROWS)), expected, atol=1e-6)


def test_python_closure_gets_the_batch_and_returns_its_outputs(tmp_path):
    path, expected = art.closure(tmp_path)
    assert load_model("python-closure", model_path=str(tmp_path)).predict(list(art.ROWS)) == expected


def test_entry_point_and_import_path_plugins_load(tmp_path, monkeypatch):
    name = art.entry_point_dist(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert find_plugin(name).kind == "entry-point"
        out = load_model(name).predict(list(art.ROWS[:2]))
        assert np.allclose(out, 3 * art.ROWS[:2])
        assert find_plugin("tripler_pkg:load").kind == "import-path"
        assert np.allclose(load_model("tripler_pkg:load").predict([art.ROWS[0]]), [3 * art.ROWS[0]])
    finally:
        sys.modules.pop("tripler_pkg", None)


def test_unknown_launcher_names_everything_tried():
    with pytest.raises(UnknownModel) as err:
        find_plugin("bogus")
    for tried in ("noop", "sklearn", "model-dir", "package.module:factory", "schooner.models"):
        assert tried in str(err.value)


def test_import_path_to_a_missing_module_or_factory_is_named():
    with pytest.raises(UnknownModel, match="no_such_module"):
        find_plugin("no_such_module:load")
    with pytest.raises(ModelLoadError, match="no callable 'nope'"):
        load_model("json:nope")


def test_model_dir_whose_load_raises_is_a_load_error(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "model.py").write_text("def load(model_path, num_threads=1, gpu=None):\n    raise RuntimeError('no weights')\n")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model("model-dir", model_path=str(d))


def test_paths_outside_the_roots_dotdot_and_symlinks_out_are_refused(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "ok.joblib").write_bytes(b"x")
    outside = tmp_path / "evil.pkl"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.pkl")
    roots = [str(root)]
    assert model_roots.inside(str(root / "ok.joblib"), roots) == str((root / "ok.joblib").resolve())
    assert model_roots.inside("ok.joblib", roots) == str((root / "ok.joblib").resolve())
    for bad in (str(outside), str(root / ".." / "evil.pkl"), "../evil.pkl", str(root / "link.pkl"), "/etc/passwd"):
        with pytest.raises(model_roots.UnsafeModelPath, match="outside the model roots"):
            model_roots.inside(bad, roots)
    with pytest.raises(model_roots.UnsafeModelPath, match="cache_dir"):
        model_roots.check_options({"cache_dir": "/tmp"}, roots)
    with pytest.raises(model_roots.UnsafeModelPath, match="no model roots"):
        model_roots.inside("x", [])
