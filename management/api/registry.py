"""Clipper's registry endpoints: apps, models, versions, links and the containers list."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from schooner import defaults
from schooner.types import AppSpec, ModelSpec
from management import model_check
from management.api.common import (MANAGER_KEY, MODEL_ROOTS_KEY, SUCCESS, call, read_body, spec, store_of,
                                   write)
from management.errors import NotFound
from management.store import ReplicaRecord, Store

# Clipper's older clients say "integers" for ints.
_INPUT_TYPE_ALIASES = {"integers": "ints"}


def app_info(app: AppSpec, linked: list[str]) -> dict:
    """Clipper's verbose app description."""
    return {"name": app.name, "input_type": app.input_type.value, "default_output": app.default_output,
            "latency_slo_micros": app.latency_slo_micros, "policy": app.policy, "on_overload": app.on_overload,
            "linked_models": linked}


def model_info(model: ModelSpec, current: str | None) -> dict:
    """Clipper's verbose model description plus every ModelSpec field."""
    info = dataclasses.asdict(model)
    info["input_type"] = model.input_type.value
    info.update(model_name=model.name, model_version=model.version, is_current_version=model.version == current,
                container_name=model.image or model.launcher or model.name)
    return info


async def ping(request: web.Request) -> web.Response:
    """Liveness."""
    return web.Response(text="pong")


@write
async def add_app(request: web.Request) -> web.Response:
    """Register an application."""
    body = await read_body(request)
    input_type = body.string("input_type", allow_empty=False)
    app = spec(AppSpec, name=body.string("name", allow_empty=False),
               input_type=_INPUT_TYPE_ALIASES.get(input_type, input_type),
               default_output=body.string("default_output", defaults.DEFAULT_OUTPUT),
               latency_slo_micros=body.integer("latency_slo_micros", defaults.LATENCY_SLO_MICROS, minimum=1),
               policy=body.string("policy", "default", allow_empty=False),
               on_overload=body.string("on_overload", defaults.ON_OVERLOAD, allow_empty=False))
    await call(store_of(request).add_app, app)
    return web.Response(text=SUCCESS)


@write
async def add_model(request: web.Request) -> web.Response:
    """Register a model version (the first version of a model becomes current)."""
    body = await read_body(request)
    name = body.string("model_name", allow_empty=False)
    input_type = body.string("input_type", allow_empty=False)
    image = body.string("image", "") or body.string("container_name", "")
    launcher = body.string("launcher", "")
    optional = {"batch_size": body.batch_size("batch_size", defaults.BATCH_SIZE),
                "max_batch_size": body.integer("max_batch_size", defaults.MAX_BATCH_SIZE, minimum=1),
                "batch_wait_timeout_micros": body.integer("batch_wait_timeout_micros",
                                                          defaults.BATCH_WAIT_TIMEOUT_MICROS, minimum=0),
                "max_queue_size": body.integer("max_queue_size", defaults.MAX_QUEUE_SIZE, minimum=1),
                "cache_enabled": body.boolean("cache_enabled", False),
                "cache_size_bytes": body.integer("cache_size_bytes", defaults.CACHE_SIZE_BYTES, minimum=0),
                "input_shape": body.integers("input_shape", None, minimum=1),
                "cpus_per_replica": body.integer("cpus_per_replica", 1, minimum=1),
                "gpus": body.integers("gpus", [], minimum=0)}
    model = spec(ModelSpec, name=name, version=body.version("model_version"),
                 input_type=_INPUT_TYPE_ALIASES.get(input_type, input_type),
                 labels=body.strings("labels", []), image=image,
                 model_data_path=body.string("model_data_path", ""),
                 launcher=launcher or name, model_opts=body.obj("model_opts", {}),
                 **optional)
    model = await call(model_check.resolve, model, request.app[MODEL_ROOTS_KEY], bool(launcher))
    await call(store_of(request).add_model, model)
    return web.Response(text=SUCCESS)


@write
async def add_model_links(request: web.Request) -> web.Response:
    """Link an application to its model."""
    body = await read_body(request)
    await call(store_of(request).add_links, body.string("app_name", allow_empty=False),
               body.strings("model_names"))
    return web.Response(text=SUCCESS)


@write
async def set_model_version(request: web.Request) -> web.Response:
    """Route a model's queries to one of its versions."""
    body = await read_body(request)
    await call(store_of(request).set_current_version, body.string("model_name", allow_empty=False),
               body.version("model_version"))
    return web.Response(text=SUCCESS)


async def get_all_applications(request: web.Request) -> web.Response:
    """App names, or (verbose) every app's description."""
    body = await read_body(request)
    verbose = body.boolean("verbose", False)
    store = store_of(request)
    apps = await call(store.list_apps)
    if not verbose:
        return web.json_response([a.name for a in apps])
    return web.json_response([app_info(a, await call(store.get_links, a.name)) for a in apps])


async def get_application(request: web.Request) -> web.Response:
    """One app's description."""
    body = await read_body(request)
    name = body.string("name", allow_empty=False)
    store = store_of(request)
    app = await call(store.get_app, name)
    if app is None:
        return web.json_response({})  # Clipper: 200 {} (clipper_admin.get_app_info returns None)
    return web.json_response(app_info(app, await call(store.get_links, name)))


async def get_linked_models(request: web.Request) -> web.Response:
    """The model names linked to an app."""
    body = await read_body(request)
    name = body.string("app_name", allow_empty=False)
    store = store_of(request)
    if await call(store.get_app, name) is None:
        return web.json_response([])  # Clipper: an app that does not exist links no model
    return web.json_response(await call(store.get_links, name))


async def get_all_models(request: web.Request) -> web.Response:
    """"name:version" of every model version, or (verbose) their descriptions."""
    body = await read_body(request)
    verbose = body.boolean("verbose", False)
    store = store_of(request)
    models = await call(store.list_models)
    if not verbose:
        return web.json_response([f"{m.name}:{m.version}" for m in models])
    state = await call(store.load_state)
    return web.json_response([model_info(m, state.current_versions.get(m.name)) for m in models])


async def get_model(request: web.Request) -> web.Response:
    """One model version's description (the current version if none is named)."""
    body = await read_body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version", None)
    store = store_of(request)
    model = await call(store.get_model, name, version)
    if model is None:
        return web.json_response({})  # Clipper: 200 {} (clipper_admin.get_model_info returns None)
    info = model_info(model, await call(store.get_current_version, name))
    desired = await call(store.replicas.get_desired, model.name, model.version) or {}
    # "failed": its replicas exit before serving (failure says why); "deployed": replicas are asked for.
    info["status"] = "failed" if desired.get("failed") else "deployed" if desired else "registered"
    info["failure"] = desired.get("failed", "")
    return web.json_response(info)


async def get_all_containers(request: web.Request) -> web.Response:
    """"model:version:replica_id" of every replica, or (verbose) their records."""
    body = await read_body(request)
    verbose = body.boolean("verbose", False)
    store = store_of(request)
    records = await call(store.replicas.find)
    if verbose:
        return web.json_response([await _clipper_record(store, r) for r in records])
    return web.json_response([f"{r.model_name}:{r.model_version}:{r.replica_id}" for r in records])


async def get_container(request: web.Request) -> web.Response:
    """One replica's record."""
    body = await read_body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version")
    replica_id = body.version("replica_id")
    store = store_of(request)
    record = await call(store.replicas.get, name, version, replica_id)
    if record is None:
        return web.json_response({})  # Clipper: 200 {} (clipper_admin.get_container_info returns None)
    return web.json_response(await _clipper_record(store, record))


async def _clipper_record(store: Store, record: ReplicaRecord) -> dict:
    """A replica record with the fields Clipper's container records carry as well."""
    out = record.to_dict()
    out.setdefault("model_id", f"{record.model_name}:{record.model_version}")
    out.setdefault("model_replica_id", record.seq)  # Clipper numbers a model's replicas 0, 1, ...
    if "input_type" not in out:
        model = await call(store.get_model, record.model_name, record.model_version)
        if model is not None:
            out["input_type"] = model.input_type.value
    return out


@write
async def delete_app(request: web.Request) -> web.Response:
    """Remove an application and its links."""
    body = await read_body(request)
    await call(store_of(request).delete_app, body.string("name", allow_empty=False))
    return web.Response(text=SUCCESS)


@write
async def delete_model_links(request: web.Request) -> web.Response:
    """Unlink models from an application."""
    body = await read_body(request)
    await call(store_of(request).delete_links, body.string("app_name", allow_empty=False),
               body.strings("model_names"))
    return web.Response(text=SUCCESS)


@write
async def delete_versioned_model(request: web.Request) -> web.Response:
    """Stop a model version's replicas (when there is a manager) and remove it."""
    body = await read_body(request)
    name = body.string("model_name", allow_empty=False)
    version = body.version("model_version")
    store = store_of(request)
    if await call(store.get_model, name, version) is None:
        raise NotFound(f"model {name!r} version {version!r} does not exist")
    manager = request.app[MANAGER_KEY]
    if manager is not None:
        await manager.delete_model(name, version)
    await call(store.delete_model, name, version)
    return web.Response(text=SUCCESS)


def register(app: web.Application) -> None:
    app.router.add_get("/admin/ping", ping)
    for handler in (add_app, add_model, add_model_links, set_model_version, get_all_applications,
                    get_application, get_linked_models, get_all_models, get_model, get_all_containers,
                    get_container, delete_app, delete_model_links, delete_versioned_model):
        app.router.add_post(f"/admin/{handler.__name__}", handler)
