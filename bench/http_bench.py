"""HTTP serving benchmark of a whole deployment, driven by ``wrk``; prints one JSON object.

The whole deployment (``schooner up``: Redis, management, frontend and the
replica) runs pinned to ``--deploy-cpu`` and ``wrk`` (closed loop) to
``--wrk-cpu``. Workloads, each at concurrency 1 and 64:

- W1: ``noop``, ``{"input": [32 doubles]}``, batch size 1;
- W2: ``elastic-net``, ``{"input": [4096 floats]}``, batches of up to 32, 5 ms wait.

Also the tree's PSS (``schooner up`` and every descendant) with each replica,
and the CPU µs per query of each of its processes (robust to a shared machine:
time stolen by other work does not count).
``--rounds N`` repeats every point N times (alternating) and reports medians.
With ``--baseline REF`` the same runs against REF, checked out in a temporary
``git worktree`` and driven through its CLI, in the same run: both deployments
are up at once and the points alternate between them, so that machine noise
lands on both; every figure then also comes as a ratio (this tree / REF).

    python bench/http_bench.py --baseline ce29f36 [--warmup-s 2] [--duration-s 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = {
    "W1": {"model": "noop", "input_type": "doubles", "width": 32, "batch_size": 1, "max_batch_size": 1,
           "wait_micros": 0},
    "W2": {"model": "elastic-net", "input_type": "floats", "width": 4096, "batch_size": -1, "max_batch_size": 32,
           "wait_micros": 5000},
}
SLO_MICROS = 30_000_000  # no default outputs, no admission refusals (429) even on a loaded machine

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("HTTP_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


class Deployment:
    """``schooner up`` of one source tree, pinned to one core, with a REST helper."""

    def __init__(self, label: str, tree: Path, cpu: int, workdir: Path, env: dict[str, str]) -> None:
        self.label, self.tree, self.cpu, self.env = label, tree, cpu, env
        self.state_dir = workdir / f"state-{label}"
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.addresses: dict[str, str] = {}

    def start(self, timeout_s: float = 120.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONUNBUFFERED="1")
        for key in [k for k in env if k.startswith("SCHOONER_")]:
            del env[key]  # default settings, unless --env says otherwise
        env.update(self.env)
        env["SCHOONER_ADMIN_TOKEN"] = self.token  # by environment: never on a command line
        self.log = open(self.state_dir.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), sys.executable, "-m", "management.cli", "up", "--free-ports",
             "--state-dir", str(self.state_dir)],
            cwd=self.tree, env=env, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        text = ""
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"{self.label}: schooner up exited; see {self.log.name}")
            text += line
            if line.startswith("}"):
                self.addresses = json.loads(text[text.index("{"):])
                return
        raise RuntimeError(f"{self.label}: schooner up did not print its addresses in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def admin(self, path: str, body: dict, timeout_s: float = 300.0) -> Any:
        req = urllib.request.Request(self.addresses["management"] + path, data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{self.label} {path}: HTTP {err.code}: {err.read()[:500]!r}") from None

    def deploy(self, name: str, w: dict) -> None:
        """App ``name`` with its model, one replica on this deployment's core, ready."""
        self.admin("/admin/add_app", {"name": name, "input_type": w["input_type"], "default_output": "None",
                                      "latency_slo_micros": SLO_MICROS})
        self.admin("/admin/add_model", {
            "model_name": name, "model_version": "1", "input_type": w["input_type"], "launcher": w["model"],
            "batch_size": w["batch_size"], "max_batch_size": w["max_batch_size"],
            "batch_wait_timeout_micros": w["wait_micros"], "input_shape": [w["width"]]})
        self.admin("/admin/add_model_links", {"app_name": name, "model_names": [name]})
        self.admin("/admin/set_num_replicas", {"model_name": name, "model_version": "1", "num_replicas": 1,
                                               "model_cpus": [self.cpu], "wait_s": 240})

    def scale_down(self, name: str) -> None:
        self.admin("/admin/set_num_replicas", {"model_name": name, "model_version": "1", "num_replicas": 0})

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [p for p in [root, *root.children(recursive=True)] if p.name() != "taskset"]

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each role of the tree."""
        out: dict[str, float] = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
                role = _role(p.cmdline())
            except psutil.Error:
                continue
            out[role] = out.get(role, 0.0) + t.user + t.system
        return out

    def pss_mib(self) -> dict:
        """PSS of ``schooner up`` and every descendant, by process, and the sum."""
        rows: dict[str, float] = {}
        for p in self.processes():
            try:
                cmd = p.cmdline()
                pss = p.memory_full_info().pss / 2**20
            except psutil.Error:
                continue
            name = _role(cmd)
            rows[name] = round(rows.get(name, 0.0) + pss, 1)
        return {"total_mib": round(sum(rows.values()), 1), "by_process_mib": rows}


def _role(cmd: list[str]) -> str:
    if "-m" in cmd[:-1]:
        module = cmd[cmd.index("-m") + 1]
        return {"management.cli": "schooner up", "containers.replica": "replica"}.get(module, module)
    return os.path.basename(cmd[0]).split(" ")[0] if cmd else "?"


def wrk(url: str, body_path: Path, cpu: int, connections: int, duration_s: float) -> dict:
    """One closed-loop wrk run; requests/s and latency percentiles (ms)."""
    script = body_path.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT)
    out = subprocess.run(["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
                          "--timeout", "10s", "-s", str(script), url],
                         capture_output=True, text=True, env=dict(os.environ, HTTP_BENCH_BODY=str(body_path)),
                         timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("RESULT "):])
    secs = r["duration_us"] / 1e6
    return {"qps": round(r["requests"] / secs), "p50_ms": round(r["p50_us"] / 1e3, 2),
            "p90_ms": round(r["p90_us"] / 1e3, 2), "p99_ms": round(r["p99_us"] / 1e3, 2),
            "mean_ms": round(r["mean_us"] / 1e3, 2), "requests": r["requests"], "errors": r["errors"],
            "non_2xx": r["non_2xx"]}


def _median_run(runs: list[dict]) -> dict:
    """Median of each figure over the rounds (each figure on its own), with every round's q/s."""
    out: dict[str, Any] = {key: float(np.median([r[key] for r in runs])) for key in runs[0]
                           if key != "cpu_us_per_query"}
    out["qps_rounds"] = [r["qps"] for r in runs]
    roles = runs[0]["cpu_us_per_query"]
    out["cpu_us_per_query"] = {role: float(np.median([r["cpu_us_per_query"].get(role, 0.0) for r in runs]))
                               for role in roles}
    return out


def ratios(new: dict, old: dict) -> dict:
    """new/old for every number both have (nested)."""
    out: dict = {}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            out[key] = ratios(value, old[key])
        elif isinstance(value, (int, float)) and isinstance(old.get(key), (int, float)) and old[key]:
            out[key] = round(value / old[key], 3)
    return out


def _worktree(ref: str, workdir: Path) -> Path:
    path = workdir / f"baseline-{ref}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def _body(workdir: Path, app: str, w: dict) -> Path:
    body = workdir / f"{app}.json"
    body.write_text(json.dumps({"input": [0.5 + i % 7 for i in range(w["width"])]}))
    return body


def footprint(d: Deployment, args: argparse.Namespace, workdir: Path) -> dict:
    """The tree's PSS with each workload's replica after a c=64 run, with no other deployment up."""
    out = {}
    d.start()
    try:
        for wname in args.workloads:
            w = WORKLOADS[wname]
            app = f"{wname.lower()}pss"
            d.deploy(app, w)
            wrk(f"{d.addresses['frontend_http']}/{app}/predict", _body(workdir, app, w), args.wrk_cpu, 64,
                args.warmup_s + args.duration_s)
            out[f"pss_{w['model']}"] = d.pss_mib()
            d.scale_down(app)
    finally:
        d.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", metavar="REF", help="also run REF (a commit) in a git worktree, side by side")
    p.add_argument("--deploy-cpu", type=int, default=0)
    p.add_argument("--wrk-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every point this many times, alternating trees; figures are medians")
    p.add_argument("--env", nargs="+", default=[], metavar="KEY=VALUE",
                   help="environment of this tree's deployment (e.g. SCHOONER_SPIN_MODE=adaptive); the "
                        "baseline always runs with default settings")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("http_bench needs wrk on PATH (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="http-bench-"))
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = _worktree(args.baseline, workdir)
    env = dict(kv.split("=", 1) for kv in args.env)
    deps = [Deployment(label, tree, args.deploy_cpu, workdir, env if label == "this" else {})
            for label, tree in trees.items()]
    results: dict[str, dict] = {d.label: {} for d in deps}
    try:
        for d in deps:
            d.start()
        for wname in args.workloads:
            w = WORKLOADS[wname]
            app = wname.lower()
            body = _body(workdir, app, w)
            for d in deps:
                d.deploy(app, w)
            for c in args.concurrency:
                runs: dict[str, list[dict]] = {d.label: [] for d in deps}
                for _ in range(args.rounds):
                    for d in deps:  # alternate: machine noise lands on both trees
                        url = f"{d.addresses['frontend_http']}/{app}/predict"
                        wrk(url, body, args.wrk_cpu, c, args.warmup_s)
                        cpu0 = d.cpu_s()
                        run = wrk(url, body, args.wrk_cpu, c, args.duration_s)
                        cpu1 = d.cpu_s()
                        n = max(1, run["requests"])
                        run["cpu_us_per_query"] = {role: round((cpu1[role] - cpu0.get(role, 0.0)) / n * 1e6, 1)
                                                   for role in cpu1}
                        run["cpu_us_per_query"]["total"] = round(sum(run["cpu_us_per_query"].values()), 1)
                        runs[d.label].append(run)
                for d in deps:
                    results[d.label][f"{wname}_c{c}"] = _median_run(runs[d.label])
            for d in deps:
                d.scale_down(app)
        for d in deps:
            d.stop()
        # PSS with one tree up at a time: two trees up at once share the pages of the same libraries,
        # which would hide a share of each tree's footprint.
        for d in deps:
            results[d.label].update(footprint(d, args, workdir))
    finally:
        for d in deps:
            d.stop()
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["baseline"])],
                           capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, Any] = {
        "setup": {"deploy_cpu": args.deploy_cpu, "wrk_cpu": args.wrk_cpu, "warmup_s": args.warmup_s,
                  "duration_s": args.duration_s, "rounds": args.rounds, "baseline": args.baseline, "env": env, "workloads": WORKLOADS,
                  "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)},
        "this": results["this"]}
    if args.baseline:
        out["baseline"] = results["baseline"]
        out["ratio_this_over_baseline"] = ratios(results["this"], results["baseline"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
