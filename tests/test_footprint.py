"""Run-time footprint: long-running control-plane processes do not load what they never use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module, unwanted", [
    # `schooner up` only supervises: it probes its children with schooner.httpget and Redis in RESP
    ("management.cli", {"numpy", "requests", "redis", "aiohttp", "psutil", "ssl", "urllib.request"}),
    ("management.__main__", {"numpy", "requests"}),
    # the frontend serves HTTP with frontend.httpserver (httptools), not aiohttp (~10 MiB of PSS)
    ("frontend.__main__, frontend.server, frontend.http, frontend.httpserver", {"aiohttp", "yarl", "multidict"}),
])
def test_control_plane_entry_points_do_not_import_what_they_never_use(module, unwanted):
    assert not unwanted & _modules_after_import(module)


def test_starting_embedded_redis_loads_no_redis_client_and_its_ping_checks_the_password(tmp_path):
    """`schooner up` starts Redis and waits for its PING without the client (asyncio, ssl: ~9 MiB)."""
    code = (
        "import json, sys\n"
        "from management.embedded_redis import EmbeddedRedis, resp_ping\n"
        f"with EmbeddedRedis({str(tmp_path / 'redis')!r}) as r:\n"
        "    ok = resp_ping(r.host, r.port, r.password)\n"
        "    wrong = resp_ping(r.host, r.port, r.password + 'x')\n"
        "    print(json.dumps([ok, wrong, sorted(sys.modules)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    ok, wrong, modules = json.loads(out.stdout.splitlines()[-1])
    assert ok is True and wrong is False
    assert not {"redis", "asyncio", "ssl"} & set(modules)
