"""The management REST API: Clipper's /admin/... endpoints plus Schooner's replica and batching ones.

Every endpoint is ``POST`` with a JSON body, except ``GET /admin/ping`` and
``GET /admin/metrics``. Errors answer JSON ``{"error": code, "message": ...}``:
400 for a bad body (naming the field and the type it must have), 401 for a
write without the admin token, 404 for an unknown app/model/replica, 409 for a
conflict, 503 when Redis (or the replica manager) is not available, 502 when
``/admin/metrics`` cannot reach the frontend.

Decisions where Clipper is silent or differs: successful writes answer Clipper's
``Success!`` text; unknown names are 404 (Clipper answers 400 or ``{}``); the
admin token guards writes only (reads stay open, as in Clipper); an app links to
exactly one model; ``model_version`` may be an int or a string and is kept as a
string; ``model_version`` omitted on Schooner's endpoints means the current one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from frontend import defaults
from frontend.types import AppSpec, ModelSpec
from management._body import Body
from management.errors import BadRequest, ManagementError, NotFound, Unauthorized
from management.store import Store

log = logging.getLogger(__name__)

SUCCESS = "Success!"  # Clipper's answer to a successful write

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STORE_KEY = web.AppKey("store", Store)
MANAGER_KEY = web.AppKey("manager", object)
FRONTEND_URL_KEY = web.AppKey("frontend_http_url", str)
TOKEN_KEY = web.AppKey("admin_token", str)

# Clipper's older clients say "integers" for ints.
_INPUT_TYPE_ALIASES = {"integers": "ints"}


class ManagerUnavailable(ManagementError):
    """The service runs without a replica manager (registry-only)."""

    status = 503
    code = "no_manager"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every ManagementError with its status and a JSON body; log the unexpected."""
    try:
        return await handler(request)
    except ManagementError as err:
        return _error(err.status, err.code, str(err))
    except web.HTTPException:
        raise
    except Exception as err:  # noqa: BLE001 - a request must get an answer, not a dropped connection
        log.exception("unexpected error in %s", request.path)
        return _error(500, "internal", f"{type(err).__name__}: {err}")


async def _body(request: web.Request) -> Body:
    raw = await request.read()
    if not raw.strip():
        return Body({})
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise BadRequest(f"request body must be a JSON object: {err}") from err
    return Body(data)


def _write(handler: Handler) -> Handler:
    """Mark a handler as a write: it needs the admin token when one is set."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[TOKEN_KEY]
        if token and request.headers.get("Authorization", "") != f"Bearer {token}":
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <admin token>'")
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


def _store(request: web.Request) -> Store:
    return request.app[STORE_KEY]


def _manager(request: web.Request) -> Any:
    manager = request.app[MANAGER_KEY]
    if manager is None:
        raise ManagerUnavailable("this management service runs without a replica manager")
    return manager


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking store call off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _spec(cls: type, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        raise BadRequest(str(err)) from err


# -- shapes of answers ----------------------------------------------------------------------

def app_info(app: AppSpec, linked: list[str]) -> dict:
    """Clipper's verbose app description."""
    return {"name": app.name, "input_type": app.input_type.value, "default_output": app.default_output,
            "latency_slo_micros": app.latency_slo_micros, "policy": app.policy, "linked_models": linked}


def model_info(model: ModelSpec, current: str | None) -> dict:
    """Clipper's verbose model description plus every ModelSpec field."""
    info = dataclasses.asdict(model)
    info["input_type"] = model.input_type.value
    info.update(model_name=model.name, model_version=model.version, is_current_version=model.version == current,
                container_name=model.image or model.launcher or model.name)
    return info


# -- Clipper's registry endpoints --------------------------------------------------------------

async def ping(request: web.Request) -> web.Response:
    """Liveness."""
    return web.Response(text="pong")


@_write
async def add_app(request: web.Request) -> web.Response:
    """Register an application."""
    body = await _body(request)
    input_type = body.string("input_type", allow_empty=False)
    app = _spec(AppSpec, name=body.string("name", allow_empty=False),
                input_type=_INPUT_TYPE_ALIASES.get(input_type, input_type),
                default_output=body.string("default_output", defaults.DEFAULT_OUTPUT),
                latency_slo_micros=body.integer("latency_slo_micros", defaults.LATENCY_SLO_MICROS, minimum=1),
                policy=body.string("policy", "default", allow_empty=False))
    await _call(_store(request).add_app, app)
    return web.Response(text=SUCCESS)


@_write
async def add_model(request: web.Request) -> web.Response:
    """Register a model version (the first version of a model becomes current)."""
    body = await _body(request)
    name = body.string("model_name", allow_empty=False)
    input_type = body.string("input_type", allow_empty=False)
    image = body.string("image", "") or body.string("container_name", "")
    optional = {"batch_size": body.integer("batch_size", defaults.BATCH_SIZE),
                "max_batch_size": body.integer("max_batch_size", defaults.MAX_BATCH_SIZE, minimum=1),
                "batch_wait_timeout_micros": body.integer("batch_wait_timeout_micros",
                                                          defaults.BATCH_WAIT_TIMEOUT_MICROS, minimum=0),
                "max_queue_size": body.integer("max_queue_size", defaults.MAX_QUEUE_SIZE, minimum=1),
                "input_shape": body.integers("input_shape", None, minimum=1),
                "cpus_per_replica": body.integer("cpus_per_replica", 1, minimum=1),
                "gpus": body.integers("gpus", [], minimum=0)}
    model = _spec(ModelSpec, name=name, version=body.version("model_version"),
                  input_type=_INPUT_TYPE_ALIASES.get(input_type, input_type),
                  labels=body.strings("labels", []), image=image,
                  model_data_path=body.string("model_data_path", ""),
                  launcher=body.string("launcher", "") or name, model_opts=body.obj("model_opts", {}),
                  **optional)
    await _call(_store(request).add_model, model)
    return web.Response(text=SUCCESS)


@_write
async def add_model_links(request: web.Request) -> web.Response:
    """Link an application to its model."""
    body = await _body(request)
    await _call(_store(request).add_links, body.string("app_name", allow_empty=False),
                body.strings("model_names"))
    return web.Response(text=SUCCESS)


@_write
async def set_model_version(request: web.Request) -> web.Response:
    """Route a model's queries to one of its versions."""
    body = await _body(request)
    await _call(_store(request).set_current_version, body.string("model_name", allow_empty=False),
                body.version("model_version"))
    return web.Response(text=SUCCESS)


async def get_all_applications(request: web.Request) -> web.Response:
    """App names, or (verbose) every app's description."""
    body = await _body(request)
    verbose = body.boolean("verbose", False)
    store = _store(request)
    apps = await _call(store.list_apps)
    if not verbose:
        return web.json_response([a.name for a in apps])
    return web.json_response([app_info(a, await _call(store.get_links, a.name)) for a in apps])


async def get_application(request: web.Request) -> web.Response:
    """One app's description."""
    body = await _body(request)
    name = body.string("name", allow_empty=False)
    store = _store(request)
    app = await _call(store.get_app, name)
    if app is None:
        raise NotFound(f"application {name!r} does not exist")
    return web.json_response(app_info(app, await _call(store.get_links, name)))


async def get_linked_models(request: web.Request) -> web.Response:
    """The model names linked to an app."""
    body = await _body(request)
    name = body.string("app_name", allow_empty=False)
    store = _store(request)
    if await _call(store.get_app, name) is None:
        raise NotFound(f"application {name!r} does not exist")
    return web.json_response(await _call(store.get_links, name))


async def get_all_models(request: web.Request) -> web.Response:
    """"name:version" of every model version, or (verbose) their descriptions."""
    body = await _body(request)
    verbose = body.boolean("verbose", False)
    store = _store(request)
    models = await _call(store.list_models)
    if not verbose:
        return web.json_response([f"{m.name}:{m.version}" for m in models])
    state = await _call(store.load_state)
    return web.json_response([model_info(m, state.current_versions.get(m.name)) for m in models])


async def get_model(request: web.Request) -> web.Response:
    """One model version's description (the current version if none is named)."""
    body = await _body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version", None)
    store = _store(request)
    model = await _call(store.get_model, name, version)
    if model is None:
        raise NotFound(f"model {name!r} version {version!r} does not exist" if version
                       else f"model {name!r} does not exist")
    return web.json_response(model_info(model, await _call(store.get_current_version, name)))


async def get_all_containers(request: web.Request) -> web.Response:
    """"model:version:replica_id" of every replica, or (verbose) their records."""
    body = await _body(request)
    verbose = body.boolean("verbose", False)
    records = await _call(_store(request).list_replicas)
    if verbose:
        return web.json_response(records)
    return web.json_response([f"{r['model_name']}:{r['model_version']}:{r['replica_id']}" for r in records])


async def get_container(request: web.Request) -> web.Response:
    """One replica's record."""
    body = await _body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version")
    replica_id = body.version("replica_id")
    record = await _call(_store(request).get_replica, name, version, replica_id)
    if record is None:
        raise NotFound(f"replica {replica_id!r} of model {name!r} version {version!r} does not exist")
    return web.json_response(record)


@_write
async def delete_app(request: web.Request) -> web.Response:
    """Remove an application and its links."""
    body = await _body(request)
    await _call(_store(request).delete_app, body.string("name", allow_empty=False))
    return web.Response(text=SUCCESS)


@_write
async def delete_model_links(request: web.Request) -> web.Response:
    """Unlink models from an application."""
    body = await _body(request)
    await _call(_store(request).delete_links, body.string("app_name", allow_empty=False),
                body.strings("model_names"))
    return web.Response(text=SUCCESS)


@_write
async def delete_versioned_model(request: web.Request) -> web.Response:
    """Stop a model version's replicas (when there is a manager) and remove it."""
    body = await _body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version")
    store = _store(request)
    if await _call(store.get_model, name, version) is None:
        raise NotFound(f"model {name!r} version {version!r} does not exist")
    manager = request.app[MANAGER_KEY]
    if manager is not None:
        await manager.delete_model(name, version)
    await _call(store.delete_model, name, version)
    return web.Response(text=SUCCESS)


def _register_clipper(app: web.Application) -> None:
    app.router.add_get("/admin/ping", ping)
    for handler in (add_app, add_model, add_model_links, set_model_version, get_all_applications,
                    get_application, get_linked_models, get_all_models, get_model, get_all_containers,
                    get_container, delete_app, delete_model_links, delete_versioned_model):
        app.router.add_post(f"/admin/{handler.__name__}", handler)


# -- Schooner's own endpoints ------------------------------------------------------------------

async def _version_or_current(store: Store, name: str, version: str | None) -> str:
    if version is not None:
        if await _call(store.get_model, name, version) is None:
            raise NotFound(f"model {name!r} version {version!r} does not exist")
        return version
    current = await _call(store.get_current_version, name)
    if current is None:
        raise NotFound(f"model {name!r} does not exist")
    return current


@_write
async def set_num_replicas(request: web.Request) -> web.Response:
    """Scale a model version to ``num_replicas`` pinned replicas; answers the replicas."""
    body = await _body(request)
    manager = _manager(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(_store(request), name, body.version("model_version", None))
    replicas = await manager.set_num_replicas(
        name, version, body.integer("num_replicas", minimum=0),
        cpus_per_replica=body.integer("cpus_per_replica", None, minimum=1),
        model_cpus=body.integers("model_cpus", None, minimum=0),
        gpus=body.integers("gpus", None, minimum=0),
        wait_s=body.number("wait_s", 0.0, minimum=0.0))
    return web.json_response(replicas)


async def get_model_replicas(request: web.Request) -> web.Response:
    """Every replica of a model version: pid/container, cpus, gpu, state, queue depth."""
    body = await _body(request)
    manager = _manager(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(_store(request), name, body.version("model_version", None))
    return web.json_response(await manager.describe(name, version))


@_write
async def set_model_batching(request: web.Request) -> web.Response:
    """Change a model version's batch size (-1 = adaptive), max batch size and batch wait."""
    body = await _body(request)
    store = _store(request)
    name = body.string("model_name", allow_empty=False)
    version = await _version_or_current(store, name, body.version("model_version", None))
    batch_size = body.integer("batch_size")
    if batch_size < 1 and batch_size != -1:
        raise BadRequest("field 'batch_size' must be a positive integer or -1 (adaptive)")
    model = await _call(store.update_model_batching, name, version, batch_size,
                        body.integer("max_batch_size", None, minimum=1),
                        body.integer("batch_wait_timeout_micros", None, minimum=0))
    return web.json_response(model_info(model, await _call(store.get_current_version, name)))


async def get_replica_logs(request: web.Request) -> web.Response:
    """The last ``tail`` lines a replica wrote."""
    body = await _body(request)
    manager = _manager(request)
    replica_id = body.version("replica_id")
    tail = body.integer("tail", 200, minimum=1)
    if await _call(manager.get, replica_id) is None:
        raise NotFound(f"replica {replica_id!r} does not exist")
    logs = await _call(manager.logs, replica_id, tail)
    return web.json_response({"replica_id": replica_id, "logs": logs})


async def metrics(request: web.Request) -> web.Response:
    """The frontend's metrics (Clipper JSON, or Prometheus text with ?format=prometheus)."""
    url = f"{request.app[FRONTEND_URL_KEY]}/metrics"
    params = {"format": request.query["format"]} if "format" in request.query else None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url, params=params) as resp:
                payload = await resp.read()
                return web.Response(body=payload, status=resp.status,
                                    content_type=resp.content_type or "application/json")
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        return _error(502, "frontend_unavailable", f"cannot fetch {url}: {err or type(err).__name__}")


def _register_schooner(app: web.Application) -> None:
    app.router.add_get("/admin/metrics", metrics)
    for handler in (set_num_replicas, get_model_replicas, set_model_batching, get_replica_logs):
        app.router.add_post(f"/admin/{handler.__name__}", handler)


def make_app(store: Store, manager: Any, *, frontend_http_url: str, admin_token: str = "") -> web.Application:
    """The aiohttp application serving the management API.

    ``manager`` is a ``management.manager.ReplicaManager`` or None (then the
    replica endpoints answer 503); ``frontend_http_url`` is where
    ``/admin/metrics`` fetches the frontend's metrics.
    """
    if not isinstance(store, Store):
        raise TypeError(f"store must be a management.store.Store, got {type(store).__name__}")
    if not isinstance(frontend_http_url, str) or not frontend_http_url.startswith(("http://", "https://")):
        raise ValueError(f"frontend_http_url must be an http:// URL, got {frontend_http_url!r}")
    if not isinstance(admin_token, str):
        raise TypeError("admin_token must be a string")
    app = web.Application(middlewares=[_errors])
    app[STORE_KEY] = store
    app[MANAGER_KEY] = manager
    app[FRONTEND_URL_KEY] = frontend_http_url.rstrip("/")
    app[TOKEN_KEY] = admin_token
    _register_clipper(app)
    _register_schooner(app)
    return app
