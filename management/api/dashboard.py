"""The live dashboard: ``GET /dashboard`` (one HTML page, plain SVG charts) and ``GET /dashboard/data``.

Both are reads and need no token; the page scales a model's replicas through
``POST /admin/set_num_replicas`` with the token the operator types in. The data
is one snapshot: apps, models and versions, replicas (cores or GPU, state, queue
depth, batches) and, per model, cumulative counts and current latency figures
from the frontend's metrics; the page turns successive snapshots into rates.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources

import aiohttp
from aiohttp import web

from management.api.common import FRONTEND_URL_KEY, MANAGER_KEY, call, store_of
from management.frontend_client import merge
from schooner import metric_names as names

_PAGE = "dashboard.html"


def _index(dump: dict) -> dict[str, dict]:
    """name -> body of every metric in a metrics dump."""
    out: dict[str, dict] = {}
    for entries in dump.values():
        for entry in entries:
            out.update(entry)
    return out


def _num(body: dict | None, key: str) -> float:
    try:
        return float((body or {}).get(key, 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def model_stats(metrics: dict[str, dict], model: str, version: str, apps: list[str]) -> dict[str, float]:
    """Cumulative counts and current latency/batch figures of one model version and the apps it serves."""
    prefix = names.model_prefix(model, version)
    stats = {"outputs": _num(metrics.get(prefix + names.MODEL_NUM_PREDICTIONS), "count"),
             "batch_size_mean": _num(metrics.get(prefix + names.MODEL_BATCH_SIZE), "mean"),
             "answers": 0.0, "defaults": 0.0, "overloaded": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    for app in apps:
        p = names.app_prefix(app)
        answers = _num(metrics.get(p + names.APP_NUM_PREDICTIONS), "count")
        stats["answers"] += answers
        # The default ratio's denominator is the app's predictions counter, so this is the default count.
        stats["defaults"] += round(_num(metrics.get(p + names.APP_DEFAULT_RATIO), "ratio") * answers)
        stats["overloaded"] += _num(metrics.get(p + names.APP_ERRORS.format(code="overloaded")), "count")
        latency = metrics.get(p + names.APP_LATENCY)
        stats["p50_ms"] = max(stats["p50_ms"], _num(latency, "p50") / 1000.0)
        stats["p99_ms"] = max(stats["p99_ms"], _num(latency, "p99") / 1000.0)
    return stats


async def _frontend_metrics(url: str) -> dict:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"{url}/metrics", params={"values": "numbers"}) as resp:
                return await resp.json() if resp.status == 200 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return {}


async def data(request: web.Request) -> web.Response:
    """GET /dashboard/data: one snapshot of the deployment and its counters."""
    store = store_of(request)
    state = await call(store.load_state)
    manager = request.app[MANAGER_KEY]
    records = await call(store.replicas.find)
    view = await manager.frontend_view() if manager is not None else {}
    metrics = _index(await _frontend_metrics(request.app[FRONTEND_URL_KEY]))
    apps = [{"name": a.name, "input_type": a.input_type.value, "latency_slo_micros": a.latency_slo_micros,
             "default_output": a.default_output, "linked_models": state.links.get(a.name, [])}
            for a in sorted(state.apps.values(), key=lambda a: a.name)]
    models = []
    for (name, version), spec in sorted(state.models.items()):
        serving = [a["name"] for a in apps if a["linked_models"][:1] == [name]]
        current = state.current_versions.get(name) == version
        models.append({"name": name, "version": version, "current": current, "input_type": spec.input_type.value,
                       "batch_size": int(spec.batch_size), "max_batch_size": spec.max_batch_size,
                       "cpus_per_replica": spec.cpus_per_replica, "apps": serving if current else [],
                       "stats": model_stats(metrics, name, version, serving if current else [])})
    replicas = [merge(r, view.get(r.replica_id)) for r in records]
    replicas.sort(key=lambda r: (r["model_name"], str(r["model_version"]), r.get("seq", 0), r["replica_id"]))
    return web.json_response({"time_s": time.time(), "apps": apps, "models": models, "replicas": replicas,
                              "frontend": bool(metrics)})


async def page(request: web.Request) -> web.Response:
    """GET /dashboard: the page (self-contained: no script or style from anywhere else)."""
    html = resources.files("management.api").joinpath(_PAGE).read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                            "style-src 'unsafe-inline'"})


def register(app: web.Application) -> None:
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data", data)
