"""deploy/docker-compose.yml on the real Docker engine: Debian's docker-compose brings up Redis, the
frontend and the management service from schooner/control, and ``--scale replica=N`` scales the model."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from polling import wait_for

from management.embedded_redis import free_port
from schooner import __version__

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
IMAGES = (f"schooner/control:{__version__}", f"schooner/replica:{__version__}")

pytestmark = pytest.mark.docker


def _have_images() -> bool:
    return all(subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
               for image in IMAGES)


@pytest.fixture
def compose():
    if shutil.which("docker-compose") is None:
        pytest.skip("needs Debian's docker-compose (bin/test installs it)")
    if not _have_images():
        pytest.skip(f"needs {', '.join(IMAGES)} (bin/build_docker_images.sh --control)")
    token = secrets.token_hex(16)
    ports = {name: free_port() for name in ("HTTP", "CLIENT", "MANAGEMENT", "REDIS")}
    env = {**os.environ, "SCHOONER_ADMIN_TOKEN": token, "SCHOONER_VERSION": __version__,
           **{f"SCHOONER_{name}_PORT": str(port) for name, port in ports.items()}}
    project = f"schooner-test-{secrets.token_hex(3)}"

    def run(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "-p", project, "-f", str(COMPOSE_FILE), *args], env=env,
                              capture_output=True, text=True, timeout=timeout_s)

    try:
        out = run("up", "-d")
        assert out.returncode == 0, out.stderr
        yield run, ports, token
    finally:
        run("down", "-v", "--remove-orphans", "--timeout", "10")


def _ready_replicas(http: str) -> int:
    try:
        rows = requests.get(f"{http}/replicas", timeout=5).json()
    except (requests.RequestException, ValueError):
        return 0
    return sum(r["state"] in ("ready", "busy") for r in rows)


def test_compose_runs_a_deployment_and_scale_scales_the_replicas(compose):
    run, ports, token = compose
    management = f"http://127.0.0.1:{ports['MANAGEMENT']}"
    http = f"http://127.0.0.1:{ports['HTTP']}"

    def pinged() -> bool:
        try:
            return requests.get(f"{management}/admin/ping", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(pinged, 120, "the management service in compose")
    headers = {"Authorization": f"Bearer {token}"}
    for path, body in (("add_app", {"name": "echo", "input_type": "doubles", "latency_slo_micros": 5_000_000}),
                       ("add_model", {"model_name": "noop", "model_version": "1", "input_type": "doubles"}),
                       ("add_model_links", {"app_name": "echo", "model_names": ["noop"]})):
        resp = requests.post(f"{management}/admin/{path}", json=body, headers=headers, timeout=30)
        assert resp.status_code == 200, f"{path}: {resp.text}"
    wait_for(lambda: _ready_replicas(http) == 1, 120, "the compose replica to serve")

    def answered() -> bool:
        # A replica registers with the frontend directly, while the frontend learns the app and link from
        # Redis: on a loaded machine the replica can be ready a moment before the frontend has followed
        # the deployment (404 unknown app, or Clipper's "no connected models" default). Any other answer
        # must be the model's.
        resp = requests.post(f"{http}/echo/predict", json={"input": [2.5, 1.0]}, timeout=30)
        body = resp.json()
        if resp.status_code == 404 or "No connected models" in str(body.get("default_explanation")):
            return False
        assert resp.status_code == 200 and body.get("default") is False and body.get("output") == [2.5], body
        return True

    wait_for(answered, 60, "the frontend to serve the app")

    out = run("up", "-d", "--scale", "replica=3")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: _ready_replicas(http) == 3, 120, "three replicas after --scale replica=3")
    user = run("exec", "-T", "frontend", "id", "-u")
    assert user.returncode == 0 and user.stdout.strip() != "0", "the control plane runs as root"
