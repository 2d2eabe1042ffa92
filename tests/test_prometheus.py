"""Prometheus exposition: prometheus_client families with labels, checked by promtool on live output."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import requests
from frontend_support import start_replica
from polling import wait_for
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures
from prometheus_client.parser import text_string_to_metric_families

from frontend.client import Client
from frontend.metrics import MetricsRegistry
from frontend.prometheus import Exposition, RegistryCollector
from schooner.types import AppSpec, ModelSpec

PROMTOOL = shutil.which("promtool")


def _promtool(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60)


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _render(reg: MetricsRegistry) -> str:
    body, _ = Exposition(RegistryCollector(reg)).render()
    return body.decode()


def test_apps_whose_names_differ_only_in_punctuation_are_one_family_with_labels():
    reg = MetricsRegistry()
    for app in ("col-x", "col_x", "col.x"):
        reg.counter(f"app:{app}:num_predictions").inc(3)
        reg.histogram(f"app:{app}:prediction_latency").insert(1500)  # µs
    fams = _families(_render(reg))
    preds = fams["schooner_app_predictions"]
    assert preds.type == "counter"
    assert {s.labels["app"]: s.value for s in preds.samples if s.name.endswith("_total")} == {
        "col-x": 3, "col_x": 3, "col.x": 3}
    lat = fams["schooner_app_prediction_latency_seconds"]
    assert lat.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in lat.samples
               if s.name.endswith("_bucket") and s.labels["app"] == "col-x"}
    assert buckets["0.001"] == 0 and buckets["0.0025"] == 1 and buckets["+Inf"] == 1  # 1.5 ms, in seconds


def test_rates_are_left_to_promql_and_model_series_carry_model_and_version():
    reg = MetricsRegistry()
    reg.meter("app:a:prediction_throughput").mark(5)
    reg.meter("model:m:2:prediction_throughput").mark(5)
    reg.counter("model:m:2:batch_fired_full").inc(4)
    reg.histogram("model:m:2:batch_size", unit="queries").insert(8)
    text = _render(reg)
    assert "rate" not in text and "throughput" not in text
    fams = _families(text)
    [fired] = [s for s in fams["schooner_model_batches"].samples if s.name.endswith("_total")]
    assert fired.labels == {"model": "m", "version": "2", "reason": "full"} and fired.value == 4
    assert fams["schooner_model_batch_size"].type == "histogram"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_a_live_frontends_exposition_and_deleted_apps_leave_it(frontend_thread, procs):
    apps = [AppSpec(name, "floats", latency_slo_micros=20_000_000) for name in ("col-x", "col_x", "col.x")]
    frontend_thread.deploy(apps, [ModelSpec("noop", "1", "floats")], {a.name: ["noop"] for a in apps})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        for app in apps:
            client.predict_many(app.name, [np.ones(4, np.float32)] * 10, concurrency=4)
    resp = requests.get(f"{frontend_thread.http_url}/metrics/prometheus", timeout=10)
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    result = _promtool(resp.text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    fams = _families(resp.text)
    assert {s.labels["app"] for s in fams["schooner_app_predictions"].samples} == {"col-x", "col_x", "col.x"}
    [ready] = [s for s in fams["schooner_model_replicas"].samples if s.labels["state"] in ("ready", "busy")]
    assert ready.labels["model"] == "noop" and ready.value == 1
    assert "schooner_model_queue_depth" in fams and "schooner_queueing_delay_seconds" in fams

    frontend_thread.deploy(apps[:1], [ModelSpec("noop", "1", "floats")], {"col-x": ["noop"]})

    def only_col_x() -> bool:
        text = requests.get(f"{frontend_thread.http_url}/metrics/prometheus", timeout=10).text
        return 'app="col_x"' not in text and 'app="col.x"' not in text and 'app="col-x"' in text

    wait_for(only_col_x, 30, "the deleted apps' series to go")
    openmetrics = requests.get(f"{frontend_thread.http_url}/metrics/prometheus", timeout=10,
                               headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


