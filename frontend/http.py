"""The frontend's HTTP endpoint (aiohttp): Clipper's predict API, metrics, health, replicas."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import orjson
from aiohttp import web

from frontend.admission import validate_items
from schooner.errors import BadInput, NoModel, Overloaded, SchoonerError, UnknownApp
from frontend.prometheus import Exposition, RegistryCollector
from frontend.queries import Query
from schooner.types import InputType

if TYPE_CHECKING:
    from frontend.server import Frontend

log = logging.getLogger(__name__)

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _as_list(value: Any) -> Any:
    """orjson's fallback: arrays it does not serialize natively (non-native byte order...) as lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__} as JSON")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    """``data`` as a JSON response, encoded by orjson (numpy arrays directly)."""
    return web.Response(body=orjson.dumps(data, default=_as_list, option=_NUMPY), status=status,
                        headers=headers, content_type="application/json")


def error_response(err: SchoonerError) -> web.Response:
    """The JSON error response for ``err``, with Retry-After when overloaded."""
    headers = None
    if isinstance(err, Overloaded):
        headers = {"Retry-After": str(max(1, round(err.retry_after_s)))}
    return json_response({"error": err.code, "message": str(err)}, status=err.http_status, headers=headers)


def _to_item(value: Any, input_type: InputType, field: str) -> tuple[list, Any]:
    """One JSON input as a wire item (meta, payload); BadInput names the field."""
    if input_type is InputType.STRINGS:
        if not isinstance(value, str):
            raise BadInput(f"field {field!r} must be a string")
        return ["s", None, None], value.encode("utf-8")
    if input_type is InputType.BYTES:
        if not isinstance(value, str):
            raise BadInput(f"field {field!r} must be a base64 string")
        try:
            return ["b", None, None], base64.b64decode(value, validate=True)
        except ValueError:
            raise BadInput(f"field {field!r} is not valid base64") from None
    if not isinstance(value, list):
        raise BadInput(f"field {field!r} must be a list of numbers")
    try:
        arr = np.asarray(value)
    except ValueError:
        raise BadInput(f"field {field!r} must be a rectangular list of numbers") from None
    kinds = "iu" if input_type is InputType.INTS else "iuf"
    if arr.size and arr.dtype.kind not in kinds:
        what = "integers" if input_type is InputType.INTS else "numbers"
        raise BadInput(f"field {field!r} must hold only {what}")
    if arr.dtype != input_type.dtype:
        arr = arr.astype(input_type.dtype)
    # The array itself is the payload (no tobytes copy): ZMQ sends its buffer.
    return ["a", arr.dtype.str, list(arr.shape)], arr


def output_json(meta: Any, frame: Any) -> Any:
    """An output item for :func:`json_response`: an array (orjson writes it), or a string."""
    kind = meta[0]
    buf = frame.buffer if hasattr(frame, "buffer") else frame
    if kind == "a":
        arr = np.frombuffer(buf, dtype=np.dtype(meta[1])).reshape(meta[2])
        return arr.tolist() if arr.ndim == 0 else arr
    raw = bytes(buf)
    if kind == "s":
        return raw.decode("utf-8", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _prediction(query: Query, i: int) -> dict:
    out = {"query_id": query.query_id, "output": output_json(query.metas[i], query.frames[i]),
           "default": query.defaults[i]}
    if query.defaults[i]:
        out["default_explanation"] = query.explanation
    return out


class HttpApi:
    """Handlers of the HTTP endpoint, bound to one Frontend."""

    def __init__(self, frontend: Frontend) -> None:
        self.fe = frontend
        self.exposition = Exposition(RegistryCollector(frontend.metrics, self._live_gauges))

    def _live_gauges(self) -> Iterator[tuple[str, str, dict[str, str], float]]:
        """Queue depth per model version and replicas per state, read at scrape time."""
        fe = self.fe
        for name, version in list(fe.dispatcher.queues):
            yield ("model_queue_depth", "Queries waiting in the model version's queue now.",
                   {"model": name, "version": version}, fe.queue_depth(name, version))
        counts: dict[tuple[str, str, str], int] = {}
        for info in fe.replicas():
            key = (info.model_name, info.model_version, info.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (name, version, state), n in sorted(counts.items()):
            yield ("model_replicas", "Replicas registered with this frontend, per model version and state.",
                   {"model": name, "version": version, "state": state}, n)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self.fe.config.max_message_bytes)
        app.router.add_post("/{app}/predict", self.predict)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/metrics/prometheus", self.prometheus)
        app.router.add_get("/health", self.health)
        app.router.add_get("/replicas", self.replicas)
        return app

    async def predict(self, request: web.Request) -> web.Response:
        """POST /<app>/predict with {"input": ...} or {"input_batch": [...]}."""
        try:
            query, batch = await self._submit(request)
        except SchoonerError as err:
            return error_response(err)
        err = await query.peer
        if err is not None:
            return error_response(err)
        if batch:
            return json_response({"batch_predictions": [_prediction(query, i) for i in range(query.n)]})
        return json_response(_prediction(query, 0))

    async def _submit(self, request: web.Request) -> tuple[Query, bool]:
        dispatcher = self.fe.dispatcher
        name = request.match_info["app"]
        route = dispatcher.routes.get(name)
        if route is None:
            raise UnknownApp(f"no app named {name!r}")
        if route.queue is None:
            raise NoModel(route.problem)
        body = await request.read()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise BadInput(f"request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise BadInput("request body must be a JSON object with field 'input' or 'input_batch'")
        mq = route.queue
        input_type = mq.spec.input_type
        if "input" in data:
            items = [_to_item(data["input"], input_type, "input")]
            batch = False
        elif "input_batch" in data:
            values = data["input_batch"]
            if not isinstance(values, list) or not values:
                raise BadInput("field 'input_batch' must be a non-empty list of inputs")
            items = [_to_item(v, input_type, f"input_batch[{i}]") for i, v in enumerate(values)]
            batch = True
        else:
            raise BadInput("missing field 'input' (or 'input_batch')")
        metas = [m for m, _ in items]
        frames = [f for _, f in items]
        validate_items(metas, frames, input_type, mq.input_shape, self.fe.config.max_input_bytes)
        now = time.monotonic()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        query = Query(dispatcher.next_query_id(), route.app, len(items), now, self._done)
        query.peer = future
        dispatcher.submit(route, query, metas, frames, now)
        dispatcher.pump_dirty()
        return query, batch

    def _done(self, query: Query, err: SchoonerError | None) -> None:
        self.fe.dispatcher.record(query, err)
        if not query.peer.done():
            query.peer.set_result(err)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: Clipper JSON, or Prometheus text with ?format=prometheus."""
        if request.query.get("format") == "prometheus":
            return await self.prometheus(request)
        return json_response(self.fe.metrics.dump())

    async def prometheus(self, request: web.Request) -> web.Response:
        """GET /metrics/prometheus: Prometheus text exposition (OpenMetrics if the Accept header asks)."""
        body, content_type = self.exposition.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(self, request: web.Request) -> web.Response:
        """GET /health: up, with counts of apps, models and live replicas."""
        fe = self.fe
        live = [r for r in fe.replicas() if r.state.live]
        return json_response({"status": "ok", "apps": len(fe.state.apps), "models": len(fe.state.models),
                                  "live_replicas": len(live)})

    async def replicas(self, request: web.Request) -> web.Response:
        """GET /replicas: every replica's ReplicaInfo plus its model's queue depth."""
        out = []
        for info in self.fe.replicas():
            row = dataclasses.asdict(info)
            row["input_type"] = info.input_type.value
            row["state"] = info.state.value
            row["queue_depth"] = self.fe.queue_depth(info.model_name, info.model_version)
            out.append(row)
        return json_response(out)
