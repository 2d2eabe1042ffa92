"""Every console script: --version, usage naming the script, help on every flag, one line for a port
in use, readiness that another server cannot fake, and schooner status/down/reset from the state dir."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from management.embedded_redis import free_port
from management.stack import Stack, StackError
from schooner import __version__

ROOT = str(Path(__file__).resolve().parents[1])
SCRIPTS = {  # console script -> module that `python -m` runs
    "schooner": "management.cli",
    "schooner-frontend": "frontend",
    "schooner-replica": "containers.replica",
    "schooner-management": "management",
    "schooner-driver": "driver",
    "schooner-build-models": "containers.build_models",
}


def _run(*args: str, timeout_s: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=ROOT, env=env, **kw)


@pytest.mark.parametrize("script, module", sorted(SCRIPTS.items()))
def test_every_console_script_has_version_and_names_itself(script, module):
    out = _run("-m", module, "--version")
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).strip() == f"{script} {__version__}"
    usage = _run("-m", module, "--help")
    assert usage.returncode == 0 and usage.stdout.startswith(f"usage: {script} "), usage.stdout[:200]


def _parsers():
    from containers.build_models import build_parser as build_models
    from containers.replica import build_parser as replica
    from driver.driver import parser as driver
    from frontend.__main__ import build_parser as frontend
    from management.cli import build_parser as schooner
    from management.config import build_parser as management

    return {"schooner": schooner(), "schooner-frontend": frontend(), "schooner-replica": replica(),
            "schooner-management": management(), "schooner-driver": driver(),
            "schooner-build-models": build_models()}


def _actions(parser):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):  # subcommands
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield action


def test_every_flag_has_help_and_is_kebab_case():
    for script, parser in _parsers().items():
        for action in _actions(parser):
            if action.help == "==SUPPRESS==" or not action.option_strings:
                continue
            assert action.help, f"{script} {action.option_strings} has no help"
            primary = [o for o in action.option_strings if o.startswith("--")][0]
            assert "_" not in primary, f"{script}: {primary} (kebab-case first; snake_case only as an alias)"


def test_driver_accepts_clippers_snake_case_and_num_clients():
    from driver.driver import parser

    args = parser().parse_args(["--model_name", "noop", "--batch_sizes", "1", "2", "--num_clients", "8",
                                "--slo-ms", "50", "--cpus_per_replica_nums", "1"])
    assert args.model_name == "noop" and args.batch_sizes == [1, 2] and args.concurrency == [8]
    assert args.slo_ms == 50 and args.cpus_per_replica_nums == [1]
    assert parser().parse_args(["-m", "noop", "-n", "4", "16"]).concurrency == [4, 16]


def test_replica_takes_model_version_and_the_old_spelling():
    from containers.replica import build_parser

    assert build_parser().parse_args(["--model-version", "3"]).version == "3"
    assert build_parser().parse_args(["--version", "4"]).version == "4"


def test_a_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _run("-m", "frontend", "--client-port", str(free_port()), "--replica-port", str(free_port()),
                   "--http-port", str(port), "--log-level", "WARNING")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("schooner-frontend: cannot listen") and str(port) in lines[0]


class _Impostor(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_readiness_is_not_fooled_by_another_server_on_the_port(tmp_path):
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    try:
        stack = Stack(http_port=impostor.server_address[1], state_dir=tmp_path)
        with pytest.raises(StackError, match="already in use|cannot listen"):  # refused before anything starts
            stack.start(timeout_s=60)
    finally:
        impostor.shutdown()
        impostor.server_close()


@pytest.mark.slow
def test_status_down_and_reset_find_a_free_ports_instance_from_its_state_dir(tmp_path):
    state = str(tmp_path / "state")
    up = subprocess.Popen([sys.executable, "-m", "management.cli", "up", "--free-ports", "--state-dir", state],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        record = Path(state) / "instance.json"
        start = time.monotonic()
        while not record.exists():
            assert up.poll() is None, up.stdout.read()
            assert time.monotonic() - start < 120, "schooner up did not come up"
            time.sleep(0.2)
        status = _run("-m", "management.cli", "status", "--state-dir", state)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "management: up" in status.stdout and "frontend: up" in status.stdout
        assert _run("-m", "management.cli", "reset", "--state-dir", state, "--yes").returncode == 1  # running
        down = _run("-m", "management.cli", "down", "--state-dir", state)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert up.wait(60) == 0
        assert _run("-m", "management.cli", "status", "--state-dir", state).returncode == 1
        assert (Path(state) / "redis").exists()  # deployments persist in the state dir...
        reset = _run("-m", "management.cli", "reset", "--state-dir", state, "--yes")
        assert reset.returncode == 0 and not (Path(state) / "redis").exists(), reset.stdout + reset.stderr
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(60)
