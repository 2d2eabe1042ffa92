"""The driver against a real stack (process backend): sweeps, placement, external deployments, modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from driver import results

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, str(REPO / "driver" / "driver.py")]
SHORT = ["-d", "2", "--window_s", "0.5", "--warmup_s", "0.5"]
RUN_TIMEOUT_S = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# sleep: a batch of n takes 20 + 1*n ms. At 8 concurrent queries, batch size 1 queues 8 x 21 ms
# (~170 ms > SLO 100 ms: default outputs) while batch size 8 serves them in batches of up to 8 (< 60 ms).
SLEEP_OPTS = '{"a_ms": 20, "b_ms": 1}'

pytestmark = [pytest.mark.slow, pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")]


def _kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for child in children:
        if child.is_running():
            child.kill()


def run_driver(argv: list[str], prefix: list[str] = (), watch_replicas: bool = False,
               token: str = "") -> tuple[int, str, str, list]:
    """Run the driver CLI to completion; returns (rc, stdout, stderr, replica affinities seen)."""
    env = dict(os.environ, SCHOONER_ADMIN_TOKEN=token) if token else None
    proc = subprocess.Popen([*prefix, *DRIVER, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen: dict[int, list[int]] = {}
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if watch_replicas:
                try:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        if any("containers.replica" in part for part in child.cmdline()):
                            seen[child.pid] = sorted(child.cpu_affinity())
                except psutil.Error:
                    pass
            time.sleep(0.2)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _kill_tree(proc)
    return proc.returncode, out, err, list(seen.values())


@pytest.fixture(scope="module")
def sleep_sweep(tmp_path_factory):
    """One short sweep of the sleep model, driver pinned to core 0 with numactl, replicas on core 1."""
    if not shutil.which("numactl"):
        pytest.skip("numactl not installed")
    out = tmp_path_factory.mktemp("sweep")
    rc, stdout, stderr, affinities = run_driver(
        ["-m", "sleep", "--model_opts", SLEEP_OPTS, "-b", "1", "8", "-r", "1", "--concurrency", "8",
         "--slo_ms", "100", "--target_qps", "100", "--out", str(out), *SHORT],
        prefix=["numactl", "-C", "0"], watch_replicas=True)
    assert rc == 0, stderr[-4000:]
    return {"out": out, "stdout": stdout, "stderr": stderr, "affinities": affinities, "doc": results.load(out)}


def test_sweep_json_has_every_field(sleep_sweep):
    doc = sleep_sweep["doc"]
    assert {"machine", "runs", "recommendation", "slo_ms", "args", "started_at", "finished_at"} <= doc.keys()
    assert {"cpu_count", "cpu_model", "python", "platform"} <= doc["machine"].keys()
    assert len(doc["runs"]) == 2
    assert doc["node_configs"] == [run["node_config"] for run in doc["runs"]]
    for run, batch in zip(doc["runs"], (1, 8)):
        nc = run["node_config"]
        assert (nc["model"], nc["batch_size"], nc["num_replicas"], nc["cpus_per_replica"]) == ("sleep", batch, 1, 1)
        assert nc["cpus"] == [1] and nc["gpus"] == [] and nc["slo_ms"] == 100
        measured = [w for w in run["client_metrics"] if w["phase"] == "measure"]
        assert measured and all({"thruput_qps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "errors", "defaults"}
                                <= w.keys() for w in measured)
        s = run["summary"]
        # Queries that cannot make the objective are shed (overloaded), nothing else fails.
        assert s["count"] > 0 and s["errors"] == s["error_codes"].get("overloaded", 0)
        assert s["mean_batch_size"] is not None
        assert "histograms" in run["clipper_metrics"]
        assert len(run["latencies_ms"]) == min(s["count"], results.MAX_SAVED_LATENCIES)
    csv_files = list(sleep_sweep["out"].glob("results-*.csv"))
    assert len(csv_files) == 1 and len(csv_files[0].read_text().strip().splitlines()) == 3


def test_sweep_batches_as_configured(sleep_sweep):
    runs = sleep_sweep["doc"]["runs"]
    assert runs[0]["summary"]["mean_batch_size"] == pytest.approx(1.0)
    assert runs[1]["summary"]["mean_batch_size"] > 2


def test_every_window_is_logged_with_progress(sleep_sweep):
    err = sleep_sweep["stderr"]
    windows = re.findall(r"p99: [\d.]+ ms, mean: [\d.]+ ms, thruput: [\d.]+ qps, batch_sizes: mean [\d.]+", err)
    logged = sum(len(r["client_metrics"]) for r in sleep_sweep["doc"]["runs"])
    assert len(windows) >= logged >= 2 * 4
    assert "configuration 1 of 2" in err and "configuration 2 of 2" in err and "estimated time left" in err


def test_recommendation_matches_the_sleep_model_cost(sleep_sweep):
    doc = sleep_sweep["doc"]
    slow, fast = (r["summary"] for r in doc["runs"])
    # Queries that cannot meet the SLO are shed at arrival (overloaded) or, already queued, get the
    # default output at dispatch: the slow run shows them; goodput counts neither.
    assert slow["defaults"] + slow["error_codes"].get("overloaded", 0) > 0
    assert fast["p99_ms"] < 100 and fast["defaults"] == 0
    assert fast["goodput_qps"] > slow["goodput_qps"]
    rec = doc["recommendation"]
    assert rec["slo"]["run_index"] == 1 and rec["slo"]["node_config"]["batch_size"] == 8
    assert rec["target_qps"]["run_index"] == 1
    assert "[slo] run 1:" in sleep_sweep["stdout"]


def test_replicas_run_on_the_core_the_driver_left_free(sleep_sweep):
    assert sleep_sweep["affinities"], "no replica process was seen"
    assert all(cpus == [1] for cpus in sleep_sweep["affinities"])
    for run in sleep_sweep["doc"]["runs"]:
        assert run["replicas"] and all(list(r["cpus"]) == [1] for r in run["replicas"])


def test_sweep_plots_are_pngs(sleep_sweep):
    pngs = sorted(sleep_sweep["out"].glob("*.png"))
    kinds = {p.name.split("-")[0] for p in pngs}
    # The sweep varied the batch size only: no plot against replicas (one x value says nothing).
    assert kinds >= {"batch", "cdf"} and "replicas" not in kinds
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5_000


def test_report_redraws_from_the_saved_directory(sleep_sweep):
    for p in sleep_sweep["out"].glob("*.png"):
        p.unlink()
    proc = subprocess.run([sys.executable, "-m", "driver", "report", str(sleep_sweep["out"])], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[slo] run 1:" in proc.stdout and "qps/core" in proc.stdout
    assert {p.name.split("-")[0] for p in sleep_sweep["out"].glob("*.png")} >= {"batch", "cdf"}


@pytest.fixture
def stack(tmp_path):
    from management.stack import Stack

    with Stack(log_dir=tmp_path / "logs") as s:
        yield s


def test_driver_measures_a_running_deployment_at_an_open_loop_rate(stack, tmp_path):
    mgmt = stack.management_url.removeprefix("http://")
    front = stack.client_address.removeprefix("tcp://")
    rc, out, err, _ = run_driver(["-m", "noop", "-b", "4", "-r", "1", "-c", "1", "--rate", "40", "--arrival",
                                  "poisson", "--frontend", front, "--management", mgmt, "--out", str(tmp_path),
                                  *SHORT], token=stack.admin_token)
    assert rc == 0, err[-4000:]
    assert "starting a stack" not in err
    doc = results.load(tmp_path)
    assert len(doc["runs"]) == 1
    nc, s = doc["runs"][0]["node_config"], doc["runs"][0]["summary"]
    assert nc["load"]["kind"] == "open" and nc["load"]["rate_qps"] == 40 and nc["load"]["arrival"] == "poisson"
    assert s["errors"] == 0
    assert 20 <= s["thruput_qps"] <= 80  # Poisson arrivals at 40 qps over ~2 s: loose bounds
    import requests

    apps = requests.post(f"{stack.management_url}/admin/get_all_applications", json={}, timeout=30)
    assert apps.status_code == 200
    assert "driver-noop-app" not in json.dumps(apps.json())  # the driver removed what it deployed


def test_repeated_scale_calls_lose_no_query(tmp_path):
    rc, out, err, _ = run_driver(["-m", "sleep", "--model_opts", '{"a_ms": 2, "b_ms": 0.5}', "-r", "2",
                                  "-c", "0", "1", "--mode", "repeated_scale_calls", "--repeat", "2",
                                  "--window_s", "0.5", "--out", str(tmp_path)])
    assert rc == 0, err[-4000:]
    res = results.load(tmp_path)["mode_results"]
    assert res["ok"] and res["failed_queries"] == 0 and res["queries_answered"] > 0
    assert [c["num_replicas"] for c in res["calls"]] == [2, 1, 2, 1]


def test_load_mode_times_parallel_deployments(tmp_path):
    rc, out, err, _ = run_driver(["-m", "noop", "-r", "1", "-c", "0", "1", "--mode", "load", "--count", "2",
                                  "--out", str(tmp_path)])
    assert rc == 0, err[-4000:]
    res = results.load(tmp_path)["mode_results"]
    assert res["ok"] and len(res["models"]) == 2
    assert all(0 < m["serving_s"] <= res["all_serving_s"] for m in res["models"])
