"""The Ray backend on a three-node Ray cluster on this machine (all on 127.0.0.1).

Replicas spread over the nodes serve queries; scaling through the REST API;
a killed worker node's replicas come back on the others with no query lost;
a killed replica actor, or replica process, is restarted; the driver sweeps a
Ray-backed deployment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import requests
from management_support import http_ok
from polling import wait_for
from scale_support import ROOT, FrontendProc

from frontend.client import Client
from management.embedded_redis import free_port

# Keep every Ray process on 127.0.0.1: Ray otherwise advertises this machine's outward address even when
# told 127.0.0.1. Read by Ray at import, so set before it; the management process inherits it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="needs the [ray] extra")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NODE_ARGS = {"num_cpus": 2, "object_store_memory": 80 * 1024 * 1024}
# Notice a dead node in ~1.5 s instead of the default ~15 s.
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 1000}
MODEL = "noop"
APP = "ray-app"


@pytest.fixture(scope="module")
def cluster():
    """A Ray head and two worker nodes, each with 2 CPUs."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix socket paths live under it
    # Cluster() also writes the head's address to ray_current_cluster in Ray's default temp folder (not
    # temp_dir), and fails when that folder does not exist yet, as on a fresh machine.
    os.makedirs(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray"), exist_ok=True)
    c = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "include_dashboard": False, "_system_config": SYSTEM_CONFIG, "temp_dir": temp_dir})
    try:
        workers = [c.add_node(**NODE_ARGS) for _ in range(2)]
        c.wait_for_nodes()
        assert c.address.startswith("127.0.0.1:"), c.address
        yield {"cluster": c, "workers": workers}
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(cluster, redis_server, tmp_path_factory):
    """A frontend, and a management service with ``--backend ray`` on the cluster; the noop app deployed."""
    from management.keys import frontend_key_file, frontend_pair

    tmp = tmp_path_factory.mktemp("ray")
    # CURVE replica links: the manager issues each replica a key; the frontend admits only those.
    frontend_pair(tmp / "state")
    # Two frontends on the one Redis, sharing the deployment's frontend key: replicas serve both.
    fronts = [FrontendProc(redis_server.url, tmp / f"frontend{i}.log", f"f{i}",
                           ("--curve-secret-file", str(frontend_key_file(tmp / "state")))) for i in (1, 2)]
    front = fronts[0]
    for f in fronts:
        f.wait_up()
    port = free_port()
    log_path = tmp / "management.log"
    with open(log_path, "wb") as log_file:
        mgmt = subprocess.Popen(
            [sys.executable, "-m", "management", "--port", str(port), "--redis-url", redis_server.url,
             "--state-dir", str(tmp / "state"), "--frontend-http", front.http, "--frontend-rpc", front.rpc,
             "--backend", "ray", "--ray-address", cluster["cluster"].address, "--reconcile-interval-s", "0.5",
             "--curve"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/admin/ping"), 90, "the management service", alive=mgmt,
                 why=log_path.read_text)
        admin = _Admin(url, (tmp / "state" / "admin-token").read_text().strip())  # generated at start
        admin("add_app", name=APP, input_type="floats", latency_slo_micros=20_000_000)
        admin("add_model", model_name=MODEL, model_version="1", input_type="floats", batch_size=4,
              launcher="noop")
        admin("add_model_links", app_name=APP, model_names=[MODEL])
        yield {"admin": admin, "front": front, "fronts": fronts, "url": url, "log": log_path, "cluster": cluster}
    finally:
        if mgmt.poll() is None:
            mgmt.send_signal(signal.SIGINT)  # drains and stops its replicas
            try:
                mgmt.wait(60)
            except subprocess.TimeoutExpired:
                mgmt.kill()
                mgmt.wait()
        for f in fronts:
            f.stop()


class _Admin:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def __call__(self, path: str, **body) -> dict:
        resp = requests.post(f"{self.url}/admin/{path}", json=body, timeout=180,
                             headers={"Authorization": f"Bearer {self.token}"})
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}

    def replicas(self) -> list[dict]:
        body = self("get_model_replicas", model_name=MODEL)
        return body.get("replicas", body) if isinstance(body, dict) else body

    def scale(self, n: int) -> list[dict]:
        self("set_num_replicas", model_name=MODEL, num_replicas=n, cpus_per_replica=1, wait_s=150)
        return self.replicas()


def _placed(admin: _Admin, n: int) -> list[dict]:
    """Wait until ``n`` replicas are serving and each names its node; return them."""
    def ok():
        rows = admin.replicas()
        good = len(rows) == n and all(r.get("state") in ("ready", "busy") and r.get("node_id") for r in rows)
        return rows if good else None
    return wait_for(ok, 150, f"{n} replicas placed and ready")


def _x() -> np.ndarray:
    return np.ones(2, dtype=np.float32)


def test_replicas_spread_over_nodes_serve_queries(deployment):
    admin = deployment["admin"]
    admin.scale(3)
    rows = _placed(admin, 3)
    nodes = {r["node_id"] for r in rows}
    print("replicas on nodes:", [(r["replica_id"], r["node_id"][:8], r["node_cpus"]) for r in rows])
    assert len(nodes) >= 2, rows  # SPREAD: one per node when all three have room
    assert all(r["backend"] == "ray" and r["node"] == "127.0.0.1" for r in rows)
    assert all(r.get("curve_public_key") for r in rows)  # each with a key of its own: CURVE links
    for front in deployment["fronts"]:
        wait_for(lambda f=front: _serving(f.http) == 3, 60, f"3 replicas serving {front.name}")
        with Client(front.client, timeout_s=60) as client:
            results = client.predict_many(APP, [_x()] * 60, concurrency=6)
        assert all(not isinstance(r, Exception) and not r.default for r in results), results


def _serving(http: str) -> int:
    rows = requests.get(f"{http}/replicas", timeout=10).json()
    rows = rows.get("replicas", rows) if isinstance(rows, dict) else rows
    return sum(r.get("state") in ("ready", "busy") for r in rows)


def test_scale_up_and_down_through_the_rest_api(deployment):
    admin = deployment["admin"]
    admin.scale(4)
    assert len(_placed(admin, 4)) == 4
    admin.scale(2)
    assert len(_placed(admin, 2)) == 2
    front_rows = requests.get(f"{deployment['front'].http}/replicas", timeout=10).json()
    front_rows = front_rows.get("replicas", front_rows) if isinstance(front_rows, dict) else front_rows
    assert sum(r.get("state") in ("ready", "busy") for r in front_rows) == 2


def _load(client_address: str, stop: threading.Event, counts: dict) -> None:
    with Client(client_address, timeout_s=60) as client:
        while not stop.is_set():
            for r in client.predict_many(APP, [_x()] * 8, concurrency=4):
                counts["failed" if isinstance(r, Exception) or r.default else "ok"] += 1


def test_killing_a_worker_node_moves_its_replicas_with_no_query_lost(deployment):
    admin, cluster = deployment["admin"], deployment["cluster"]
    admin.scale(3)
    rows = _placed(admin, 3)
    workers = cluster["workers"]
    by_id = {w.node_id: w for w in workers}
    victim = next((by_id[r["node_id"]] for r in rows if r["node_id"] in by_id), None)
    assert victim is not None, rows
    moved = [r["replica_id"] for r in rows if r["node_id"] == victim.node_id]
    stop, counts = threading.Event(), {"ok": 0, "failed": 0}
    loader = threading.Thread(target=_load, args=(deployment["front"].client, stop, counts))
    loader.start()
    try:
        wait_for(lambda: counts["ok"] > 50, 60, "load before the kill")
        killed_at = time.monotonic()
        cluster["cluster"].remove_node(victim, allow_graceful=False)
        workers.remove(victim)

        def back():
            now = {r["replica_id"]: r for r in admin.replicas()}
            return all(now.get(rid, {}).get("node_id") not in (None, victim.node_id)
                       and now[rid].get("state") in ("ready", "busy") for rid in moved)
        wait_for(back, 150, f"replicas {moved} back on the other nodes")
        recovered_s = time.monotonic() - killed_at
        ok_then = counts["ok"]
        wait_for(lambda: counts["ok"] > ok_then + 50, 60, "load after the move")
    finally:
        stop.set()
        loader.join(120)
    print(f"node kill: {counts}, replicas {moved} back in {recovered_s:.1f} s")
    assert counts["failed"] == 0, counts


def test_killed_replica_actor_and_replica_process_are_restarted(deployment):
    admin = deployment["admin"]
    rows = _placed(admin, 3)
    target = rows[0]
    rid = target["replica_id"]
    os.kill(int(target["actor_pid"]), signal.SIGKILL)  # the actor's worker: Ray restarts the actor
    wait_for(lambda: next((r for r in admin.replicas() if r["replica_id"] == rid and r.get("state") == "ready"
                           and r.get("actor_pid") != target["actor_pid"]), None), 150, "the actor restarted")
    row = next(r for r in _placed(admin, 3) if r["replica_id"] == rid)
    os.kill(int(row["pid"]), signal.SIGKILL)  # the replica process: the manager restarts it
    wait_for(lambda: next((r for r in admin.replicas() if r["replica_id"] == rid and r.get("state") == "ready"
                           and r.get("pid") != row["pid"]), None), 150, "the replica restarted")
    with Client(deployment["front"].client, timeout_s=60) as client:
        results = client.predict_many(APP, [_x()] * 30, concurrency=6)
    assert all(not isinstance(r, Exception) and not r.default for r in results)


def test_driver_sweeps_a_ray_backed_deployment(deployment, tmp_path):
    from driver import results

    deployment["admin"].scale(0)  # the sweep's model gets the cluster's CPU slots to itself
    front = deployment["front"].client.removeprefix("tcp://")
    mgmt = deployment["url"].removeprefix("http://")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "driver" / "driver.py"), "-m", "noop", "-b", "1", "4", "-r", "1", "2",
         "-c", "0", "1", "-p", "1", "--frontend", front, "--management", mgmt, "--out", str(tmp_path),
         "-d", "2", "--window_s", "0.5", "--warmup_s", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
        env={**os.environ, "SCHOONER_ADMIN_TOKEN": deployment["admin"].token})
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = results.load(tmp_path)
    assert len(doc["runs"]) == 4
    print("ray sweep summaries:", [(r["node_config"]["num_replicas"], r["node_config"]["batch_size"],
                                    {k: r["summary"].get(k) for k in ("count", "errors", "error_codes", "defaults",
                                                                      "thruput_qps")}) for r in doc["runs"]])
    for run in doc["runs"]:
        s = run["summary"]
        assert s["thruput_qps"] > 0 and s["count"] > 0, s
        # Admission at arrival may answer a few queries 429 while a fresh replica's latency estimate
        # settles on this loaded machine (seen: 56 of 3332); nothing else may fail.
        assert set(s.get("error_codes") or {}) <= {"overloaded"} and s["errors"] <= 0.1 * s["count"], s
    print("ray sweep:", [(r["node_config"]["num_replicas"], r["node_config"]["batch_size"],
                          round(r["summary"]["thruput_qps"])) for r in doc["runs"]])


def test_replicas_on_one_host_claim_different_cores(tmp_path):
    import os as _os

    from management.backends.ray import claim_cpus

    first, fds1 = claim_cpus(1, str(tmp_path), candidates=[0, 1])
    second, fds2 = claim_cpus(1, str(tmp_path), candidates=[0, 1])
    assert first == [0] and second == [1]
    third, fds3 = claim_cpus(1, str(tmp_path), candidates=[0, 1])  # none free: shares, with a warning
    assert third == [0] and fds3 == []
    for fd in fds1:  # the first replica exits: its core is free at once
        _os.close(fd)
    again, fds4 = claim_cpus(1, str(tmp_path), candidates=[0, 1])
    assert again == [0]
    for fd in fds2 + fds4:
        _os.close(fd)
