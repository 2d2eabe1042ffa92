"""The management service process: Redis (given or embedded), the store, the manager, the REST API."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web

from management.api import make_app
from management.config import ServiceConfig
from management.embedded_redis import EmbeddedRedis, connect
from management.store import Store
from schooner import model_roots
from schooner.urls import redact

log = logging.getLogger(__name__)


def build_manager(config: ServiceConfig, store: Store) -> Any:
    """The ReplicaManager with the configured backend, on every online core."""
    from management.allocator import CpuAllocator  # noqa: PLC0415 - the manager pulls in backends
    from management.manager import ReplicaManager  # noqa: PLC0415

    frontend_cpus = config.frontend_cpus
    if config.backend == "docker":
        from management.backends.docker import DockerBackend  # noqa: PLC0415 - needs the docker SDK

        backend: Any = DockerBackend(namespace=config.docker_namespace)
        allocator = CpuAllocator()
    elif config.backend == "ray":
        from management.backends.ray import RayBackend  # noqa: PLC0415 - needs the [ray] extra

        backend = RayBackend(config.ray_address, namespace=f"schooner-{config.docker_namespace}")
        # The cluster's CPUs (and GPUs) as slots: Ray places each replica on a node, and the replica's
        # actor picks its cores there (management/backends/ray.py).
        cpus, gpus = backend.capacity()
        allocator = CpuAllocator(available=list(range(max(cpus, 1))), gpus=list(range(gpus)))
        frontend_cpus = []  # the frontends' cores are on their own hosts, not among the slots
    else:
        from management.backends.local import LocalProcessBackend  # noqa: PLC0415

        backend = LocalProcessBackend(log_dir=config.log_dir)
        allocator = CpuAllocator()
    # Replicas check model paths against the same roots (they refuse to load from elsewhere).
    replica_env = {model_roots.ENV: os.pathsep.join(config.model_roots)}
    keys = None
    if config.curve:
        from management.keys import KeyIssuer, frontend_pair  # noqa: PLC0415

        server_key = config.frontend_curve_key or frontend_pair(config.state_dir).public
        keys = KeyIssuer(config.state_dir, server_key)
    return ReplicaManager(store, backend, allocator, frontend_rpc=config.frontend_rpc, keys=keys,
                          frontend_http_url=config.frontend_http,
                          reconcile_interval_s=config.reconcile_interval_s,
                          frontend_cpus=frontend_cpus, replica_env=replica_env)


async def serve(config: ServiceConfig, stop: asyncio.Event, *, manager: Any = "build") -> None:
    """Run the service until ``stop`` is set; then stop the API, the replicas and an embedded Redis.

    ``manager="build"`` builds the configured ReplicaManager; pass None to serve
    only the registry endpoints.
    """
    embedded: EmbeddedRedis | None = None
    redis_url = config.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(config.redis_state_dir)
        await asyncio.to_thread(embedded.start)
        redis_url = embedded.url
    runner: web.AppRunner | None = None
    reconcile: asyncio.Task | None = None
    try:
        store = Store(connect(redis_url))
        if manager == "build":
            manager = build_manager(config, store)
        roots = [await asyncio.to_thread(model_roots.ensure_root, r) for r in config.model_roots]
        app = make_app(store, manager, frontend_http_url=config.frontend_http, admin_token=config.admin_token,
                       model_roots=roots)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
        log.info("management service on http://%s:%s (redis %s, backend %s%s)", config.host, config.port,
                 redact(redis_url), config.backend if manager is not None else "none",
                 f", docker namespace {config.docker_namespace}" if config.backend == "docker" else "")
        if manager is not None:
            reconcile = asyncio.create_task(manager.run(stop), name="reconcile")
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        if reconcile is not None:
            await reconcile
        if manager is not None and manager != "build":
            log.info("stopping replicas")
            await manager.shutdown()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        log.info("management service stopped")
