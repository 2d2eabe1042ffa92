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
    ("management.cli", {"numpy", "requests", "redis", "aiohttp"}),  # `schooner up` only supervises
    ("management.__main__", {"numpy", "requests"}),
])
def test_control_plane_entry_points_do_not_import_what_they_never_use(module, unwanted):
    assert not unwanted & _modules_after_import(module)
