"""Clipper's query-frontend semantics on Clipper's paths, written from Clipper's documented behaviour.

- An app with no linked model answers its default output, explained "No connected models found for query".
- ``version`` in the predict body sends the query to that version of the app's model.
- Error bodies carry ``cause``.
- ``GET /metrics`` values are strings, as Clipper's JSON writes them, and include
  ``internal:aggregate_num_predictions``.
"""

from __future__ import annotations

import requests
from frontend_support import metric, start_replica
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from schooner.types import AppSpec, ModelSpec
from schooner.types import DeploymentState


def test_app_without_a_linked_model_answers_its_default_output(frontend_thread):
    frontend_thread.deploy([AppSpec("lonely", "doubles", default_output="-1.0", latency_slo_micros=1_000_000)], [], {})
    resp = requests.post(f"{frontend_thread.http_url}/lonely/predict", json={"input": [1.0, 2.0]}, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["output"] == "-1.0" and body["default"] is True
    assert body["default_explanation"] == "No connected models found for query"
    batch = requests.post(f"{frontend_thread.http_url}/lonely/predict", json={"input_batch": [[1.0], [2.0]]},
                          timeout=10).json()
    assert [p["default"] for p in batch["batch_predictions"]] == [True, True]


def test_unknown_app_and_bad_input_errors_carry_a_cause(frontend_thread):
    resp = requests.post(f"{frontend_thread.http_url}/ghost/predict", json={"input": [1.0]}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"] == "unknown_app" and "ghost" in resp.json()["cause"]
    frontend_thread.deploy([AppSpec("lonely", "doubles")], [], {})
    resp = requests.post(f"{frontend_thread.http_url}/lonely/predict", json={"nope": 1}, timeout=10)
    assert resp.status_code == 400 and "input" in resp.json()["cause"]


def test_version_in_the_body_picks_that_version_of_the_model(frontend_thread, procs):
    apps = [AppSpec("app", "floats", latency_slo_micros=20_000_000)]
    models = [ModelSpec("noop", "1", "floats"), ModelSpec("noop", "2", "floats")]
    state = DeploymentState(apps={"app": apps[0]}, models={m.key: m for m in models}, links={"app": ["noop"]},
                            current_versions={"noop": "1"})
    frontend_thread.call(frontend_thread.fe.apply_state, state)
    procs.append(start_replica(frontend_thread.replica_address, "noop", version="1", replica_id="v1"))
    procs.append(start_replica(frontend_thread.replica_address, "noop", version="2", replica_id="v2"))
    frontend_thread.wait_ready(2)
    url = f"{frontend_thread.http_url}/app/predict"
    for version in (2, "2", 1):
        resp = requests.post(url, json={"input": [1.0, 2.0], "version": version}, timeout=30)
        assert resp.status_code == 200 and resp.json()["default"] is False, resp.text
    dump = frontend_thread.metrics()
    assert metric(dump, "counters", "model:noop:2:num_predictions")["count"] == 2
    assert metric(dump, "counters", "model:noop:1:num_predictions")["count"] == 1
    resp = requests.post(url, json={"input": [1.0], "version": "9"}, timeout=10)
    assert resp.status_code == 400 and "version" in resp.json()["cause"]


def test_metrics_json_values_are_strings_as_in_clipper(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("noop", "1", "floats")], {"app": ["noop"]})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    for _ in range(3):
        assert requests.post(f"{frontend_thread.http_url}/app/predict", json={"input": [1.0]}, timeout=30).ok
    dump = requests.get(f"{frontend_thread.http_url}/metrics", timeout=10).json()
    assert metric(dump, "counters", "app:app:num_predictions") == {"count": "3"}
    assert metric(dump, "counters", "internal:aggregate_num_predictions") == {"count": "3"}
    latency = metric(dump, "histograms", "app:app:prediction_latency")
    assert latency["unit"] == "microseconds" and latency["size"] == "3" and float(latency["p99"]) > 0
    assert isinstance(metric(dump, "ratio_counters", "app:app:default_prediction_ratio")["ratio"], str)
    assert isinstance(metric(dump, "meters", "app:app:prediction_throughput")["rate"], str)
    numbers = requests.get(f"{frontend_thread.http_url}/metrics?values=numbers", timeout=10).json()
    assert metric(numbers, "counters", "app:app:num_predictions") == {"count": 3}
