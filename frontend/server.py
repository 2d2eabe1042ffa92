"""The query frontend: ZMQ client and replica endpoints, HTTP, and the deployment it serves."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, Callable

import zmq
import zmq.asyncio

from frontend.auth import ZapHandler
from frontend.config import FrontendConfig
from schooner import curve
from frontend.dispatch import Dispatcher
from schooner.errors import ShuttingDown
from frontend.ingress import ClientIngress
from frontend.looplag import LoopLag
from frontend.metrics import MetricsRegistry
from frontend.replica_events import ReplicaEvents
from frontend.replicas import ReplicaPool
from schooner.types import AppSpec, DeploymentState, ModelSpec, ReplicaInfo
from frontend.zmq_endpoints import RouterEndpoint

log = logging.getLogger(__name__)

__all__ = ["Frontend", "FrontendConfig"]

PID_CHECK_INTERVAL_S = 0.25  # how often replica processes are checked for having vanished


class Frontend:
    """Serves queries for the apps and models of a :class:`DeploymentState`.

    All methods run on the event loop thread that called :meth:`start`; the
    deployment may be set before ``start()``.
    """

    def __init__(self, config: FrontendConfig | None = None, ctx: zmq.asyncio.Context | None = None,
                 metrics: MetricsRegistry | None = None) -> None:
        self.config = config or FrontendConfig()
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.asyncio.Context()
        self.metrics = metrics if metrics is not None else MetricsRegistry()
        self.state = DeploymentState()
        self.pool = ReplicaPool(forget_after_s=self.config.forget_gone_replicas_after_s)
        self.dispatcher = Dispatcher(self.config, self.metrics, self.pool)
        self.replica_events = ReplicaEvents(self.config, self.pool, self.dispatcher)
        self.lag = LoopLag()  # how far behind the loop is, for the ZMQ client port and HTTP alike
        self.client_port = 0
        self.replica_port = 0
        self.http_port: int | None = None
        self._client: RouterEndpoint | None = None
        self._replica: RouterEndpoint | None = None
        self._http_server: Any = None
        self._liveness: asyncio.Task | None = None
        self._started = False
        self.auth: ZapHandler | None = None  # set when CURVE is on
        self.curve_public_key = ""
        self.key_lookup: Callable[[str], str | None] | None = None  # set by the follower: Redis lookup

    # ---- addresses --------------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        """ZMQ address clients connect to."""
        return f"tcp://{self.config.host}:{self.client_port}"

    @property
    def replica_address(self) -> str:
        """ZMQ address replicas connect to."""
        return f"tcp://{self.config.host}:{self.replica_port}"

    @property
    def http_url(self) -> str | None:
        """Base URL of the HTTP endpoint, None when it is off."""
        scheme = "https" if self.config.tls_cert_file else "http"
        return None if self.http_port is None else f"{scheme}://{self.config.host}:{self.http_port}"

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the sockets and HTTP port and start serving."""
        if self._started:
            raise RuntimeError("frontend already started")
        loop = asyncio.get_running_loop()
        sync_ctx: zmq.Context = zmq.Context.shadow(self.ctx.underlying)
        cfg = self.config
        replica = self._replica = RouterEndpoint(sync_ctx, loop, "replica-router", self.replica_events.on_burst,
                                                 on_unreachable=self.replica_events.on_unreachable,
                                                 spin_us=cfg.spin_us, max_message_bytes=cfg.max_message_bytes)
        self.dispatcher.attach(loop, replica.send)
        ingress = ClientIngress(self.dispatcher, cfg, send=lambda frames: client.send(frames), lag=self.lag)
        client = self._client = RouterEndpoint(sync_ctx, loop, "client-router", ingress.on_burst,
                                               spin_us=cfg.spin_us, max_message_bytes=cfg.max_message_bytes)
        ingress.endpoint = client
        client.flush_with = [replica]
        replica.flush_with = [client]
        if cfg.curve_secret_file:
            self._secure(sync_ctx, replica, client)
        try:
            self.replica_port = replica.bind(cfg.host, cfg.replica_port)
            self.client_port = client.bind(cfg.host, cfg.client_port)
        except zmq.ZMQError as err:
            replica.close()
            client.close()
            raise OSError(f"cannot bind the frontend's ZMQ ports on {cfg.host}: {err}") from err
        if cfg.http_port is not None:
            await self._start_http()
        replica.start()
        client.start()
        self._liveness = loop.create_task(self._watch_replicas())
        self._started = True
        self.dispatcher.pump_dirty()
        log.info("frontend serving: clients %s, replicas %s, http %s", self.client_address,
                 self.replica_address, self.http_url)

    def _secure(self, sync_ctx: zmq.Context, replica: RouterEndpoint, client: RouterEndpoint) -> None:
        """CURVE on the replica port (and the client port when asked), with a ZAP handler deciding who."""
        cfg = self.config
        try:
            pair = curve.load_or_create(cfg.curve_secret_file)  # made (0600) on a deployment's first start
        except curve.CurveError as err:
            replica.close()
            client.close()
            raise OSError(str(err)) from err
        self.curve_public_key = pair.public
        self.auth = ZapHandler(sync_ctx, lookup=self.replica_key_lookup).start()
        self.auth.client_keys = frozenset(cfg.client_curve_keys)
        curve.server_socket(replica.sock, pair, curve.REPLICA_DOMAIN)
        self.replica_events.authenticated = True
        if cfg.client_curve:
            curve.server_socket(client.sock, pair, curve.CLIENT_DOMAIN)
        log.info("CURVE on: replica port%s (server key %s)", " and client port" if cfg.client_curve else "",
                 pair.public)

    def set_ready(self) -> None:
        """The deployment is loaded: serve queries (and answer /health/ready 200)."""
        if not self.dispatcher.ready:
            log.info("frontend ready: %d apps, %d model versions", len(self.state.apps), len(self.state.models))
        self.dispatcher.ready = True

    def set_replica_keys(self, keys: dict[str, str]) -> None:
        """The CURVE public keys replicas may connect with: z85 key -> replica id (the manager's records)."""
        if self.auth is not None:
            self.auth.set_replica_keys(keys)

    def replica_key_lookup(self, public_key: str) -> str | None:
        """A key not known yet (a replica started a moment ago): ask ``key_lookup`` (the follower's Redis)."""
        lookup = self.key_lookup
        return lookup(public_key) if lookup is not None else None

    async def _start_http(self) -> None:
        from frontend.http import HttpApi
        from frontend.httpserver import HttpServer

        server = HttpServer(HttpApi(self).router(), self.config.max_message_bytes, lag=self.lag)
        ssl_context = None
        if self.config.tls_cert_file:
            import ssl  # noqa: PLC0415 - only an HTTPS endpoint needs it

            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
            except (OSError, ssl.SSLError) as err:
                assert self._replica is not None and self._client is not None  # bound in start()
                self._replica.close()
                self._client.close()
                raise OSError(f"cannot load the TLS certificate/key: {err}") from err
        try:
            self.http_port = await server.start(self.config.host, self.config.http_port or 0, ssl_context)
        except OSError:
            assert self._replica is not None and self._client is not None  # bound in start()
            self._replica.close()
            self._client.close()
            raise
        self._http_server = server

    async def stop(self) -> None:
        """Answer pending queries with ShuttingDown, then close every endpoint."""
        if not self._started:
            if self._own_ctx:
                self.ctx.term()
            return
        self._started = False
        if self.auth is not None:
            self.auth.stop()
        if self._liveness is not None:
            self._liveness.cancel()
            try:
                await self._liveness
            except asyncio.CancelledError:
                pass
        self.dispatcher.fail_all(ShuttingDown("the frontend is shutting down"))
        assert self._replica is not None and self._client is not None  # bound in start()
        self._client.flush()
        if self._http_server is not None:
            await self._http_server.stop()
        self._client.close()
        self._replica.close()
        self.lag.stop()
        if self._own_ctx:
            self.ctx.term()
        log.info("frontend stopped")

    async def __aenter__(self) -> Frontend:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _watch_replicas(self) -> None:
        interval = min(PID_CHECK_INTERVAL_S, self.config.heartbeat_interval_s)
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            beat = now >= next_heartbeat
            if beat:
                next_heartbeat = now + self.config.heartbeat_interval_s
            try:
                self.replica_events.check(send_heartbeats=beat)
                self.metrics.tick()  # meters count without reading the clock; their intervals close here
            except Exception:  # the watcher must outlive a bug in one round
                log.exception("replica liveness check failed")

    # ---- deployment -------------------------------------------------------------------------

    def apply_state(self, state: DeploymentState) -> None:
        """Replace apps, models, links and versions; queues of kept model versions survive."""
        self.state = copy.deepcopy(state)
        self._sync()

    def add_app(self, app: AppSpec) -> None:
        """Add or replace an app."""
        self.state.apps[app.name] = app
        self._sync()

    def remove_app(self, name: str) -> None:
        """Remove an app and its links."""
        self.state.apps.pop(name, None)
        self.state.links.pop(name, None)
        self._sync()

    def add_model(self, model: ModelSpec) -> None:
        """Add a model version, or update its batching; the first version becomes current."""
        self.state.models[model.key] = model
        self.state.current_versions.setdefault(model.name, model.version)
        self._sync()

    def remove_model(self, name: str, version: str) -> None:
        """Remove a model version; its queued queries get NoModel."""
        self.state.models.pop((name, str(version)), None)
        if self.state.current_versions.get(name) == str(version):
            del self.state.current_versions[name]
        self._sync()

    def link(self, app: str, model_name: str) -> None:
        """Route ``app``'s queries to ``model_name`` (Clipper links one model per app)."""
        if app not in self.state.apps:
            raise ValueError(f"app {app!r} does not exist")
        self.state.links[app] = [model_name]
        self._sync()

    def unlink(self, app: str, model_name: str) -> None:
        """Remove the link from ``app`` to ``model_name``."""
        models = [m for m in self.state.links.get(app, []) if m != model_name]
        if models:
            self.state.links[app] = models
        else:
            self.state.links.pop(app, None)
        self._sync()

    def set_current_version(self, model_name: str, version: str) -> None:
        """Send ``model_name``'s queries to ``version`` from now on."""
        self.state.current_versions[model_name] = str(version)
        self._sync()

    def set_peers(self, replica_addresses: list[str], own: str = "") -> None:
        """The replica addresses of every live frontend (``own`` is this one's); replicas serve them all."""
        self.replica_events.set_peers(replica_addresses, own)

    def _sync(self) -> None:
        self.dispatcher.sync(self.state)

    # ---- introspection ----------------------------------------------------------------------

    def replicas(self) -> list[ReplicaInfo]:
        """Every registered replica, with its state."""
        return self.pool.infos()

    def queue_depth(self, name: str, version: str) -> int:
        """Queries waiting in a model version's queue (0 for an unknown version)."""
        mq = self.dispatcher.queues.get((name, str(version)))
        return 0 if mq is None else sum(1 for e in mq.entries if not e.query.done)
