"""Schooner's own endpoints: replicas, batching, replica logs and the frontend's metrics."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from management.api.common import FRONTEND_URL_KEY, call, error_response, manager_of, read_body, store_of, write
from management.api.registry import model_info
from management.errors import NotFound
from management.store import Store

async def _version_or_current(store: Store, name: str, version: str | None) -> str:
    if version is not None:
        if await call(store.get_model, name, version) is None:
            raise NotFound(f"model {name!r} version {version!r} does not exist")
        return version
    current = await call(store.get_current_version, name)
    if current is None:
        raise NotFound(f"model {name!r} does not exist")
    return current


@write
async def set_num_replicas(request: web.Request) -> web.Response:
    """Scale a model version to ``num_replicas`` pinned replicas; answers the replicas."""
    body = await read_body(request)
    manager = manager_of(request)
    name = body.string("model_name", allow_empty=False)
    asked = body.version("model_version", None)
    if asked is not None and await call(store_of(request).get_model, name, asked) is None:
        # Clipper's deploy_model has its container manager scale a model before it registers it:
        # keep the request, the replicas start when add_model comes (or it is dropped after a while).
        await manager.set_pending(name, asked, body.integer("num_replicas", minimum=0),
                                  cpus_per_replica=body.integer("cpus_per_replica", None, minimum=1),
                                  model_cpus=body.integers("model_cpus", None, minimum=0),
                                  gpus=body.integers("gpus", None, minimum=0))
        return web.json_response([])
    version = await _version_or_current(store_of(request), name, asked)
    replicas = await manager.set_num_replicas(
        name, version, body.integer("num_replicas", minimum=0),
        cpus_per_replica=body.integer("cpus_per_replica", None, minimum=1),
        model_cpus=body.integers("model_cpus", None, minimum=0),
        gpus=body.integers("gpus", None, minimum=0),
        wait_s=body.number("wait_s", 0.0, minimum=0.0))
    return web.json_response(replicas)


async def get_model_replicas(request: web.Request) -> web.Response:
    """Every replica of a model version: pid/container, cpus, gpu, state, queue depth."""
    body = await read_body(request)
    manager = manager_of(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(store_of(request), name, body.version("model_version", None))
    return web.json_response(await manager.describe(name, version))


@write
async def set_model_batching(request: web.Request) -> web.Response:
    """Change a model version's batch size (a BatchSize: -1 or "adaptive" = adaptive), max batch size, batch wait."""
    body = await read_body(request)
    store = store_of(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(store, name, body.version("model_version", None))
    batch_size = body.batch_size("batch_size")
    model = await call(store.update_model_batching, name, version, batch_size,
                       body.integer("max_batch_size", None, minimum=1),
                       body.integer("batch_wait_timeout_micros", None, minimum=0))
    return web.json_response(model_info(model, await call(store.get_current_version, name)))


@write
async def set_model_cache(request: web.Request) -> web.Response:
    """Turn a model version's prediction cache on or off, and set its bound in bytes."""
    body = await read_body(request)
    store = store_of(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(store, name, body.version("model_version", None))
    model = await call(store.update_model_cache, name, version, body.boolean("enabled"),
                       body.integer("size_bytes", None, minimum=0))
    return web.json_response(model_info(model, await call(store.get_current_version, name)))


async def get_replica_logs(request: web.Request) -> web.Response:
    """The last ``tail`` lines a replica wrote."""
    body = await read_body(request)
    manager = manager_of(request)
    replica_id = body.version("replica_id")
    tail = body.integer("tail", 200, minimum=1)
    if await call(manager.get, replica_id) is None:
        raise NotFound(f"replica {replica_id!r} does not exist")
    logs = await call(manager.logs, replica_id, tail)
    return web.json_response({"replica_id": replica_id, "logs": logs})


async def metrics(request: web.Request) -> web.Response:
    """The frontend's metrics (Clipper JSON, or Prometheus text with ?format=prometheus)."""
    url = f"{request.app[FRONTEND_URL_KEY]}/metrics"
    params = {"format": request.query["format"]} if "format" in request.query else None
    try:
        headers = {"Accept": request.headers["Accept"]} if "Accept" in request.headers else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url, params=params, headers=headers) as resp:
                payload = await resp.read()
                # The whole Content-Type: Prometheus reads the format version from its parameters.
                content_type = resp.headers.get("Content-Type", "application/json")
                return web.Response(body=payload, status=resp.status, headers={"Content-Type": content_type})
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        return error_response(502, "frontend_unavailable", f"cannot fetch {url}: {err or type(err).__name__}")


def register(app: web.Application) -> None:
    app.router.add_get("/admin/metrics", metrics)
    for handler in (set_num_replicas, get_model_replicas, set_model_batching, set_model_cache, get_replica_logs):
        app.router.add_post(f"/admin/{handler.__name__}", handler)
