"""The frontend's HTTP surface, metrics, deployment API, pinning and `python -m frontend`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
from frontend_support import ROOT, FrontendThread, metric, start_replica
from polling import wait_for
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from frontend.client import Client
from management.embedded_redis import free_port
from schooner.errors import NoModel, ShuttingDown
from schooner.types import AppSpec, ModelSpec


def _deploy_noop(ft: FrontendThread) -> None:
    ft.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
              [ModelSpec("noop", "1", "floats")], {"app": ["noop"]})


def test_metrics_have_clippers_layout_and_names(frontend_thread, procs):
    _deploy_noop(frontend_thread)
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        client.predict_many("app", [np.ones(4, np.float32)] * 20, concurrency=4)
    dump = requests.get(f"{frontend_thread.http_url}/metrics", timeout=10).json()
    for kind in ("counters", "ratio_counters", "meters", "histograms"):
        assert isinstance(dump[kind], list)
    assert metric(dump, "histograms", "app:app:prediction_latency")["unit"] == "microseconds"
    assert metric(dump, "histograms", "app:app:prediction_latency")["size"] == "20"  # Clipper writes strings
    assert int(metric(dump, "counters", "app:app:num_predictions")["count"]) == 20
    assert float(metric(dump, "ratio_counters", "app:app:default_prediction_ratio")["ratio"]) == 0.0
    assert "rate" in metric(dump, "meters", "app:app:prediction_throughput")
    for name in ("prediction_latency", "batch_size", "queue_size"):
        assert "p99" in metric(dump, "histograms", f"model:noop:1:{name}")
    assert int(metric(dump, "counters", "model:noop:1:num_predictions")["count"]) == 20
    assert "rate_1min" in metric(dump, "meters", "model:noop:1:prediction_throughput")
    assert "rate" in metric(dump, "meters", "internal:aggregate_model_throughput")
    assert "p50" in metric(dump, "histograms", "internal:rpc_request_queueing_delay")
    for url in (f"{frontend_thread.http_url}/metrics?format=prometheus", f"{frontend_thread.http_url}/metrics/prometheus"):
        text = requests.get(url, timeout=10).text
        assert "schooner_app_predictions_total{app=\"app\"} 20.0" in text and "# TYPE" in text


def test_health_and_replicas_describe_the_deployment(frontend_thread, procs):
    _deploy_noop(frontend_thread)
    procs.append(start_replica(frontend_thread.replica_address, "noop", cpus="1"))
    frontend_thread.wait_ready(1)
    health = requests.get(f"{frontend_thread.http_url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["live_replicas"] == 1
    [row] = requests.get(f"{frontend_thread.http_url}/replicas", timeout=10).json()
    assert row["replica_id"] == "r1" and row["cpus"] == [1] and row["state"] == "ready"
    assert row["queue_depth"] == 0 and row["pid"] == procs[0].pid


def test_replica_is_really_pinned(frontend_thread, procs):
    _deploy_noop(frontend_thread)
    procs.append(start_replica(frontend_thread.replica_address, "noop", cpus="1"))
    frontend_thread.wait_ready(1)
    with open(f"/proc/{procs[0].pid}/status") as fh:
        allowed = [line.split()[1] for line in fh if line.startswith("Cpus_allowed_list")]
    assert allowed == ["1"]


def test_http_predict_answers_single_and_batch(frontend_thread, procs):
    _deploy_noop(frontend_thread)
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    one = requests.post(f"{frontend_thread.http_url}/app/predict", json={"input": [1.0, 2.0]}, timeout=10).json()
    assert set(one) >= {"query_id", "output", "default"} and one["default"] is False
    batch = requests.post(f"{frontend_thread.http_url}/app/predict", json={"input_batch": [[1.0], [2.0], [3.0]]},
                          timeout=10).json()
    assert len(batch["batch_predictions"]) == 3
    assert all(p["default"] is False for p in batch["batch_predictions"])


def test_replica_of_an_unknown_version_is_used_once_it_appears(frontend_thread, procs):
    _deploy_noop(frontend_thread)
    procs.append(start_replica(frontend_thread.replica_address, "noop", version="2"))
    frontend_thread.wait_ready(1)
    frontend_thread.call(frontend_thread.fe.add_model, ModelSpec("noop", "2", "floats"))
    frontend_thread.call(frontend_thread.fe.set_current_version, "noop", "2")
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        assert not client.predict("app", np.ones(4, np.float32)).default


def test_removed_model_fails_its_queued_queries(frontend_thread):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("m", "1", "floats")], {"app": ["m"]})
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        out: list = []
        worker = threading.Thread(target=lambda: out.extend(
            client.predict_many("app", [np.ones(4, np.float32)], concurrency=1)))
        worker.start()
        wait_for(lambda: frontend_thread.call(frontend_thread.fe.queue_depth, "m", "1") == 1, 10, "the query to queue")
        frontend_thread.call(frontend_thread.fe.remove_model, "m", "1")
        worker.join(30)
    assert len(out) == 1 and isinstance(out[0], NoModel)


def test_stopping_answers_pending_queries_with_shutting_down(frontend_thread):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("m", "1", "floats")], {"app": ["m"]})
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        out: list = []
        worker = threading.Thread(target=lambda: out.extend(
            client.predict_many("app", [np.ones(4, np.float32)] * 2, concurrency=2)))
        worker.start()
        wait_for(lambda: frontend_thread.call(frontend_thread.fe.queue_depth, "m", "1") == 2, 10, "the queries to queue")
        frontend_thread.stop()
        worker.join(30)
    assert len(out) == 2 and all(isinstance(r, ShuttingDown) for r in out), out


@pytest.mark.slow
def test_python_m_frontend_serves_a_config_file_and_stops_on_sigterm(tmp_path, procs):
    state = {"apps": [{"name": "app", "input_type": "floats", "latency_slo_micros": 20_000_000}],
             "models": [{"name": "noop", "version": "1", "input_type": "floats"}],
             "links": {"app": ["noop"]}}
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(state))
    client_port, replica_port, http_port = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, SCHOONER_HTTP_PORT=str(http_port))
    fe = subprocess.Popen([sys.executable, "-m", "frontend", "--config", str(path), "--client-port",
                           str(client_port), "--replica-port", str(replica_port), "--heartbeat-interval-s",
                           "0.2"], cwd=ROOT, env=env)
    procs.append(fe)
    wait_for(lambda: _health(http_port), 30, "the frontend's /health")
    procs.append(start_replica(f"tcp://127.0.0.1:{replica_port}", "noop"))
    wait_for(lambda: _health(http_port)["live_replicas"] == 1, 30, "the replica to register")
    with Client(f"tcp://127.0.0.1:{client_port}", timeout_s=30) as client:
        assert not client.predict("app", np.ones(4, np.float32)).default
    fe.send_signal(signal.SIGTERM)
    assert fe.wait(20) == 0


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    except requests.RequestException:
        return None


def test_busy_polling_frontend_client_and_replica_answer_every_query_in_order(procs):
    ft = FrontendThread(spin_us=300).start()
    try:
        _deploy_noop(ft)
        procs.append(start_replica(ft.replica_address, "noop", spin_us=2000))
        ft.wait_ready(1)
        with Client(ft.client_address, timeout_s=30, spin_us=200) as client:
            outs = [client.predict("app", np.full(4, i, np.float32)).output for i in range(50)]
            many = client.predict_many("app", [np.full(4, i, np.float32) for i in range(200)], concurrency=16)
        assert [float(o[0]) for o in outs] == [float(i) for i in range(50)]
        assert [float(p.output[0]) for p in many] == [float(i) for i in range(200)]
        # The spinning frontend still runs its loop: HTTP answers while queries flow.
        assert requests.get(f"{ft.http_url}/health", timeout=10).json()["live_replicas"] == 1
    finally:
        ft.stop()


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_spin_us_must_be_a_non_negative_integer(bad):
    from containers.replica import ReplicaConfig
    from frontend.config import FrontendConfig

    with pytest.raises(ValueError, match="spin_us"):
        FrontendConfig(spin_us=bad)
    with pytest.raises(ValueError, match="spin_us"):
        ReplicaConfig(model="noop", spin_us=bad)
    with pytest.raises(ValueError, match="spin_us"):
        Client("tcp://127.0.0.1:1", spin_us=bad)
