"""The model zoo's deep and classic models: shapes, determinism, input checks, artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from containers.models import classic, load_model
from containers.models.base import Model
from schooner import protocol
from schooner.protocol import MsgType
from schooner.types import InputType

ROOT = Path(__file__).resolve().parents[1]
CLASSIC = list(classic.MODEL_NAMES)
WIDTHS = {"lgbm": 2048, "kpca-svm": 4096, "kernel-svm": 4096, "elastic-net": 4096}
SMALL = {"n_samples": 200, "n_classes": 5}  # quick to train, for tests that train more than once


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One cache for the module, so each classic model is trained once."""
    return str(tmp_path_factory.mktemp("model-cache"))


def features(width: int, n: int, seed: int = 7) -> list[np.ndarray]:
    """n random float32 feature vectors."""
    rng = np.random.default_rng(seed)
    return list(rng.standard_normal((n, width), dtype=np.float32))


# ---- classic models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSIC)
def test_classic_model_predicts_one_score_row_per_input(name, cache_dir):
    model = load_model(name, num_threads=1, cache_dir=cache_dir)
    assert isinstance(model, Model)
    assert model.input_type is InputType.FLOATS
    assert model.input_shape == [WIDTHS[name]]
    out = model.predict(features(WIDTHS[name], 5))
    assert out.shape == (5, 10) and out.dtype == np.float32
    assert np.isfinite(out).all()
    if name in ("lgbm", "elastic-net"):  # probabilities
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_model_scores_depend_on_the_input(name, cache_dir):
    model = load_model(name, cache_dir=cache_dir)
    a, b = features(WIDTHS[name], 2, seed=3)
    out = model.predict([a, b])
    assert not np.array_equal(out[0], out[1])


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_model_is_deterministic_across_calls_and_loads(name, cache_dir):
    batch = features(WIDTHS[name], 4)
    first = load_model(name, cache_dir=cache_dir)
    second = load_model(name, num_threads=2, cache_dir=cache_dir)
    out = first.predict(batch)
    np.testing.assert_array_equal(out, first.predict(batch))
    np.testing.assert_allclose(out, second.predict(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_training_is_deterministic_across_caches(name, tmp_path):
    batch = features(WIDTHS[name], 3)
    one = classic.load_classic(name, cache_dir=str(tmp_path / "a"), **SMALL)
    two = classic.load_classic(name, cache_dir=str(tmp_path / "b"), **SMALL)
    assert one.predict(batch).shape == (3, SMALL["n_classes"])
    np.testing.assert_allclose(one.predict(batch), two.predict(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_model_rejects_wrong_width_naming_expected_and_got(name, cache_dir):
    model = load_model(name, cache_dir=cache_dir)
    width = WIDTHS[name]
    good = features(width, 1)[0]
    with pytest.raises(ValueError, match=rf"{width} floats, got shape \({width - 1},\)"):
        model.predict([good, good[:-1]])
    # The same values in another layout are flattened (the frontend checks element counts only).
    assert np.allclose(model.predict([good.reshape(2, -1)]), model.predict([good]))


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_model_rejects_non_float_input(name, cache_dir):
    model = load_model(name, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="must be floats, got dtype int32"):
        model.predict([np.zeros(WIDTHS[name], dtype=np.int32)])


def test_classic_model_accepts_float64_and_lists(cache_dir):
    model = load_model("elastic-net", cache_dir=cache_dir)
    x = features(4096, 1)[0]
    expected = model.predict([x])
    np.testing.assert_allclose(model.predict([x.astype(np.float64)]), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict([x.tolist()]), expected, rtol=1e-6)


def test_elastic_net_scores_as_its_sklearn_pipeline_does(cache_dir):
    # Scored folded (one matrix product and a softmax), not through sklearn's predict_proba: the
    # same probabilities, for ordinary inputs and for inputs far out (where a softmax overflows
    # unless shifted).
    model = load_model("elastic-net", num_threads=1, cache_dir=cache_dir)
    assert model._folded is not None
    batch = np.stack(features(4096, 16, seed=11))
    batch[-4:] *= 1e3
    want = model._pipeline.predict_proba(batch.astype(np.float64))
    np.testing.assert_allclose(model.predict(list(batch)), want, rtol=1e-4, atol=1e-6)


def test_a_two_class_elastic_net_keeps_sklearns_path(tmp_path):
    model = classic.load_classic("elastic-net", cache_dir=str(tmp_path), n_samples=200, n_classes=2)
    assert model._folded is None  # a sigmoid of one score: not the folded softmax
    batch = features(4096, 3)
    out = model.predict(batch)
    np.testing.assert_allclose(out, model._pipeline.predict_proba(np.stack(batch).astype(np.float64)),
                               rtol=1e-5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_classic_model_empty_batch_gives_empty_output(cache_dir):
    assert load_model("lgbm", cache_dir=cache_dir).predict([]).shape == (0, 10)


def test_build_models_round_trip_serves_the_same_model(tmp_path):
    out = tmp_path / "zoo"
    proc = subprocess.run(
        [sys.executable, "-m", "containers.build_models", "--out", str(out), "--n-samples", "200",
         "--n-classes", "5", "--num-threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(m["model"] for m in report["models"]) == sorted(CLASSIC)
    for entry in report["models"]:
        name = entry["model"]
        assert os.path.isfile(entry["path"]) and entry["train_s"] >= 0
        batch = features(WIDTHS[name], 3)
        from_dir = load_model(name, model_path=str(out))
        from_file = load_model(name, model_path=entry["path"])
        in_process = classic.load_classic(name, cache_dir=str(tmp_path / "cache"), **SMALL)
        expected = in_process.predict(batch)
        assert expected.shape == (3, 5)
        np.testing.assert_allclose(from_dir.predict(batch), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(from_file.predict(batch), expected, rtol=1e-5, atol=1e-6)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at .*kernel-svm.joblib"):
        classic.load_kernel_svm(model_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        classic.load_lgbm(model_path=str(tmp_path / "nope.txt"))


def test_artifact_of_another_model_is_refused(tmp_path):
    path = str(tmp_path / "kernel-svm.joblib")
    classic.build_artifact("kernel-svm", path, classic.TrainParams(n_samples=60, n_classes=3))
    with pytest.raises(ValueError, match="holds a 'kernel-svm' model, not 'elastic-net'"):
        classic.load_elastic_net(model_path=path)
    garbage = tmp_path / "lgbm.txt"
    garbage.write_text("not a model\n")
    with pytest.raises(ValueError, match="not a LightGBM model file"):
        classic.load_lgbm(model_path=str(garbage))


def test_classic_loader_refuses_unknown_options_gpu_and_bad_params(cache_dir):
    with pytest.raises(ValueError, match="unknown model options \\['depth'\\]"):
        classic.load_lgbm(cache_dir=cache_dir, depth=3)
    with pytest.raises(ValueError, match="CPU only"):
        classic.load_lgbm(cache_dir=cache_dir, gpu=0)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        classic.load_lgbm(cache_dir=cache_dir, n_classes=1)
    with pytest.raises(ValueError, match="num_threads"):
        classic.load_lgbm(cache_dir=cache_dir, num_threads=0)


@pytest.fixture
def router_socket():
    """A ROUTER on a free loopback port standing in for the frontend."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)
    ctx.term()


def _recv(sock, timeout_s: float = 90.0) -> tuple[bytes, dict, list]:
    """The next non-heartbeat message from a replica."""
    while True:
        assert sock.poll(timeout_s * 1000), f"no message from the replica within {timeout_s} s"
        ident, *frames = sock.recv_multipart(copy=False)
        hdr, payload = protocol.unpack(frames)
        if hdr["type"] != MsgType.HEARTBEAT.value:
            return ident.bytes, hdr, payload


@pytest.mark.slow
def test_replica_process_serves_a_built_classic_model(tmp_path, router_socket):
    sock, address = router_socket
    path = str(tmp_path / "elastic-net.joblib")
    classic.build_artifact("elastic-net", path, classic.TrainParams(**SMALL))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "containers.replica", "--model", "elastic-net", "--frontend", address,
         "--cpus", str(sorted(os.sched_getaffinity(0))[0]), "--model-path", path],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ident, hello, _ = _recv(sock)
        assert hello["type"] == "hello" and hello["input_shape"] == [4096]
        sock.send_multipart([ident, *protocol.pack(protocol.header(MsgType.WELCOME))])
        batch = np.stack(features(4096, 3))
        meta, frames = protocol.encode_items(batch)
        sock.send_multipart([ident, *protocol.pack(protocol.header(MsgType.PREDICT, batch_id=1, items=meta),
                                                   frames)], copy=False)
        _, hdr, payload = _recv(sock)
        assert hdr["type"] == "result" and hdr["batch_id"] == 1
        outputs = np.stack(protocol.decode_items(hdr["items"], payload))
        expected = classic.load_elastic_net(model_path=path).predict(list(batch))
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
        meta, frames = protocol.encode_items(np.zeros((1, 100), dtype=np.float32))
        sock.send_multipart([ident, *protocol.pack(protocol.header(MsgType.PREDICT, batch_id=2, items=meta),
                                                   frames)], copy=False)
        _, hdr, _ = _recv(sock)
        assert hdr["type"] == "error" and hdr["code"] == "model_error" and "4096 floats" in hdr["message"]
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# ---- deep models ----------------------------------------------------------------------------------------



def images(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """n random flat CHW images in [0, 1)."""
    rng = np.random.default_rng(seed)
    return list(rng.random((n, 3 * size * size), dtype=np.float32))


@pytest.fixture(scope="module")
def resnet():
    from containers.models.cnn import load_resnet18

    return load_resnet18(num_threads=2)


@pytest.mark.torch
@pytest.mark.slow
def test_resnet18_gives_512_features_per_image(resnet):
    assert resnet.input_shape == [3 * 224 * 224] and resnet.input_type is InputType.FLOATS
    a, b = images(224, 2)
    out = resnet.predict([a, b])
    assert out.shape == (2, 512) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    np.testing.assert_allclose(resnet.predict([a])[0], out[0], rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.slow
def test_resnet18_accepts_flat_chw_and_hwc_layouts_alike(resnet):
    flat = images(224, 1)[0]
    chw = flat.reshape(3, 224, 224)
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    out = resnet.predict([flat, chw, hwc])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2], out[0], rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.slow
def test_resnet18_init_is_deterministic_across_loads(resnet):
    from containers.models.cnn import load_resnet18

    x = images(224, 1)
    np.testing.assert_array_equal(load_resnet18(num_threads=2).predict(x), resnet.predict(x))


@pytest.mark.torch
@pytest.mark.slow
def test_cnn_rejects_wrong_shape_and_dtype(resnet):
    with pytest.raises(ValueError, match=r"150528 floats .* got shape \(1000,\)"):
        resnet.predict([np.zeros(1000, dtype=np.float32)])
    with pytest.raises(ValueError, match="must be floats, got dtype uint8"):
        resnet.predict([np.zeros(150528, dtype=np.uint8)])


@pytest.mark.torch
@pytest.mark.slow
def test_state_dict_from_model_path_gives_its_outputs(tmp_path, resnet):
    import torch
    import torchvision

    from containers.models.cnn import load_resnet18

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    net.fc = torch.nn.Identity()
    x = images(224, 2, seed=5)
    with torch.inference_mode():
        expected = net(torch.from_numpy(np.stack(x).reshape(-1, 3, 224, 224))).numpy()
    loaded = load_resnet18(model_path=str(path), num_threads=2)
    out = loaded.predict(x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out, resnet.predict(x))


@pytest.mark.torch
@pytest.mark.slow
def test_missing_or_unfit_state_dict_is_a_clear_error(tmp_path):
    import torch

    from containers.models.cnn import load_resnet18

    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_resnet18(model_path=str(tmp_path / "absent.pt"))
    wrong_shape = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1, 1, 1, 1)}, wrong_shape)
    with pytest.raises(ValueError, match="does not fit"):
        load_resnet18(model_path=str(wrong_shape))
    partial = tmp_path / "partial.pt"
    torch.save({"bogus.weight": torch.zeros(1)}, partial)
    with pytest.raises(ValueError, match=r"does not fit: missing \['conv1.weight'"):
        load_resnet18(model_path=str(partial))


@pytest.mark.torch
@pytest.mark.slow
def test_gpu_request_without_cuda_is_refused():
    import torch

    from containers.models.cnn import load_resnet18

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="gpu 0 was asked for but CUDA is not available"):
        load_resnet18(gpu=0)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("name,size,width", [("vgg", 224, 4096), ("inception", 299, 2048)])
def test_large_cnn_gives_its_feature_width(name, size, width):
    model = load_model(name, num_threads=2)
    assert model.input_shape == [3 * size * size]
    out = model.predict(images(size, 1))
    assert out.shape == (1, width) and out.dtype == np.float32 and np.isfinite(out).all()
