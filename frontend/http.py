"""The frontend's HTTP endpoint (:mod:`frontend.httpserver`): Clipper's predict API, metrics, health, replicas."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import math
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Awaitable, Iterator

import numpy as np
import orjson
import simdjson

from frontend.admission import validate_items
from schooner import defaults
from schooner.protocol import ALLOWED_DTYPES, short
from schooner.errors import BadInput, NotReady, Overloaded, SchoonerError, UnknownApp, error_body
from frontend.dispatch import Route
from frontend.httpserver import Request, Response, Router
from frontend.metrics import clipper_strings
from frontend.prometheus import Exposition, RegistryCollector
from frontend.queries import Query
from schooner.types import InputType

if TYPE_CHECKING:
    from frontend.server import Frontend

log = logging.getLogger(__name__)

NO_MODEL_EXPLANATION = "No connected models found for query"  # Clipper's words

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _as_list(value: Any) -> Any:
    """orjson's fallback: arrays it does not serialize natively (non-native byte order...) as lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__} as JSON")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    """``data`` as a JSON response, encoded by orjson (numpy arrays directly)."""
    return Response(orjson.dumps(data, default=_as_list, option=_NUMPY), status=status, headers=headers)


def error_response(err: SchoonerError) -> Response:
    """The JSON error response for ``err``, with Retry-After when overloaded."""
    headers = None
    body = error_body(err.code, str(err))
    if isinstance(err, (Overloaded, NotReady)):
        # The header takes whole seconds; the body says how long the queue ahead needs, to the ms.
        headers = {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}
        body["retry_after_s"] = round(err.retry_after_s, 3)
    return json_response(body, status=err.http_status, headers=headers)


# An overflowing float cast is refused below; numpy's own warning about it would only be noise.
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning,
                        module=__name__)
_INT_RANGE = {InputType.INTS: (int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max))}


# Bytes of a JSON array of numbers (and its nesting and spacing); a body that is nothing else once these
# are deleted holds only numbers in its input(s), so they convert straight into the model's dtype.
_NUMBER_BYTES = b"0123456789.eE+-,[] \t\n\r"
_NUMBERS_ONLY = (b'{"input":}', b'{"input_batch":}')
_FLOAT_TYPES = (InputType.FLOATS, InputType.DOUBLES)


def _numbers_only(body: bytes, input_type: InputType) -> bool:
    """Whether every scalar in the body's input(s) is a JSON number, for a float input type."""
    return input_type in _FLOAT_TYPES and body.translate(None, _NUMBER_BYTES) in _NUMBERS_ONLY


def _cast(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """``arr`` as ``dtype``; a value beyond its range becomes inf (refused by :func:`_check_finite`)."""
    try:
        return arr.astype(dtype)  # not under np.errstate: entering one cost more than the cast
    except RuntimeWarning:  # warnings as errors (tests): numpy's overflow warning
        return np.full(1, np.inf, dtype=dtype)


# Below this, orjson's list and np.array cost less than simdjson's parser and proxies (measured here:
# 32 doubles 7.8 vs 9.3 µs, 128 doubles 13.4 vs 11.7 µs, 4,096 doubles 238 vs 113 µs).
SIMDJSON_MIN_BYTES = 512
# A parser keeps buffers sized to the largest document it parsed: one per thread is kept for bodies up
# to this size (making one cost more than the parse: a W2 body, 20 KB, took 125 µs with a new parser
# and 50 µs with a kept one), and a bigger body gets a parser of its own.
SIMDJSON_KEEP_BYTES = 256 * 1024
_PARSERS = threading.local()


def _simdjson_parser(size: int) -> Any:
    """This thread's kept simdjson parser for a document of ``size`` bytes (a new one when big)."""
    if size > SIMDJSON_KEEP_BYTES:
        return simdjson.Parser()
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    return parser


def _flat_numbers(body: bytes, input_type: InputType, max_items: int, brackets: int | None = None,
                  batch: bool | None = None) -> tuple[list, list, bool, Any] | None:
    """:func:`parse_body` of ``{"input": [numbers]}`` or ``{"input_batch": [[numbers], ...]}``.

    simdjson decodes each flat array straight into a buffer of doubles, with
    no Python float per number: a W2 body (4,096 floats) took 65–113 µs here
    against 200–238 µs for orjson's list plus ``np.array``. Only for a body of
    numbers (:func:`_numbers_only`) whose arrays are flat (one bracket per
    item): nested arrays would be flattened. None for any other body and for
    any body simdjson refuses: the general path parses it and names the error
    in its own words. ``brackets`` (its ``[`` count) and ``batch`` (whether it
    is ``input_batch``), when the caller knows them already.
    """
    if brackets is None:
        brackets = body.count(b"[")
    if batch is None:
        batch = b'"input_batch"' in body  # the only key there is, besides numbers
    values: list = []
    try:
        # The thread's kept parser: every proxy into its document is gone before this returns.
        doc: Any = _simdjson_parser(len(body)).parse(body)
        try:
            values = list(doc["input_batch"]) if batch else [doc["input"]]
            if brackets != len(values) + batch or not 0 < len(values) <= max_items:
                return None
            buffers = [v.as_buffer(of_type="d") for v in values]
        finally:
            del doc
            values.clear()
    except (ValueError, TypeError, KeyError, RuntimeError):
        return None
    metas, frames = [], []
    for i, buf in enumerate(buffers):
        arr = np.frombuffer(buf, dtype=np.float64)
        if input_type.dtype != arr.dtype:
            arr = _cast(arr, input_type.dtype)
        _check_finite(arr, input_type, f"input_batch[{i}]" if batch else "input")
        metas.append(["a", arr.dtype.str, list(arr.shape)])
        frames.append(arr)
    return metas, frames, batch, None


def _check_dims(arr: np.ndarray, field: str) -> None:
    if arr.ndim > defaults.MAX_ARRAY_DIMS:
        raise BadInput(f"field {field!r} has {arr.ndim} dimensions, more than the limit of "
                       f"{defaults.MAX_ARRAY_DIMS}")


def _check_finite(arr: np.ndarray, input_type: InputType, field: str) -> None:
    """JSON has no infinities (orjson refuses them): an infinite value is an overflow of the cast."""
    if arr.size and not np.isfinite(arr).all():
        raise BadInput(f"field {field!r} holds a value outside the range of {input_type.value} "
                       f"(±{float(np.finfo(arr.dtype).max):.4g})")


def _to_item(value: Any, input_type: InputType, field: str, numbers: bool = False) -> tuple[list, Any]:
    """One JSON input as a wire item (meta, payload); BadInput names the field.

    ``numbers``: the body holds only numbers (:func:`_numbers_only`), so the list
    converts in one step into the array that is sent; otherwise numpy infers a
    dtype first, which is what tells strings, booleans and nulls apart.
    """
    if numbers and isinstance(value, list):
        try:
            arr = np.array(value, dtype=input_type.dtype)
        except ValueError:
            raise BadInput(f"field {field!r} must be a rectangular list of numbers") from None
        except RuntimeWarning:  # warnings as errors (tests): numpy's overflow warning
            arr = np.full(1, np.inf, dtype=input_type.dtype)
        _check_dims(arr, field)
        _check_finite(arr, input_type, field)
        return ["a", arr.dtype.str, list(arr.shape)], arr
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
    except (ValueError, OverflowError):
        raise BadInput(f"field {field!r} must be a rectangular list of numbers") from None
    kinds = "iu" if input_type is InputType.INTS else "iuf"
    if arr.size and arr.dtype.kind not in kinds:
        what = "integers" if input_type is InputType.INTS else "numbers"
        raise BadInput(f"field {field!r} must hold only {what} within the range of {input_type.value}")
    _check_dims(arr, field)
    if arr.dtype != input_type.dtype:
        bounds = _INT_RANGE.get(input_type)
        if bounds is not None and arr.size and (arr.min() < bounds[0] or arr.max() > bounds[1]):
            raise BadInput(f"field {field!r} holds a value outside the range of {input_type.value} "
                           f"({bounds[0]}..{bounds[1]})")
        arr = _cast(arr, input_type.dtype)
        if arr.dtype.kind == "f":
            _check_finite(arr, input_type, field)
    # The array itself is the payload (no tobytes copy): ZMQ sends its buffer.
    return ["a", arr.dtype.str, list(arr.shape)], arr


def json_depth(body: bytes, brackets: int | None = None) -> int:
    """Deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count).

    Checked before the body is parsed: a deep enough body crashes orjson (a
    C stack overflow: a 2 MB body of brackets killed the frontend). ``brackets``:
    its count of ``[`` and ``{``, when the caller has it.
    """
    if brackets is None:
        brackets = body.count(b"[") + body.count(b"{")
    if brackets <= defaults.MAX_JSON_DEPTH:
        return brackets  # an upper bound, and the cheap common case
    # Escapes first: after them every '"' left delimits a string, so a running count of quotes says
    # which bytes are inside one.
    text = np.frombuffer(body.replace(b"\\\\", b"  ").replace(b'\\"', b"  "), dtype=np.uint8)
    outside = (np.cumsum(text == ord('"')) & 1) == 0
    step = ((text == ord("[")) | (text == ord("{"))).astype(np.int8)
    step -= ((text == ord("]")) | (text == ord("}"))).astype(np.int8)
    step[~outside] = 0
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def parse_body(body: bytes, input_type: InputType, max_items: int) -> tuple[list, list, bool, Any]:
    """(metas, payload frames, whether it was ``input_batch``, its ``version`` or None) of a predict
    body; BadInput names the limit."""
    opens = body.count(b"[")
    depth = json_depth(body, opens + body.count(b"{"))
    if depth > defaults.MAX_JSON_DEPTH:
        raise BadInput(f"request body nests {depth} deep, more than the limit of {defaults.MAX_JSON_DEPTH} "
                       "(MAX_JSON_DEPTH)")
    rest = body.translate(None, _NUMBER_BYTES) if input_type in _FLOAT_TYPES else None
    numbers = rest in _NUMBERS_ONLY  # as _numbers_only, its rest kept
    if numbers and len(body) >= SIMDJSON_MIN_BYTES:
        fast = _flat_numbers(body, input_type, max_items, opens, rest == _NUMBERS_ONLY[1])
        if fast is not None:
            return fast
    try:
        data = orjson.loads(body)  # strict JSON: NaN and Infinity are refused
    except orjson.JSONDecodeError as err:
        raise BadInput(f"request body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise BadInput("request body must be a JSON object with field 'input' or 'input_batch'")
    if "input" in data:
        items = [_to_item(data["input"], input_type, "input", numbers)]
        batch = False
    elif "input_batch" in data:
        values = data["input_batch"]
        if not isinstance(values, list) or not values:
            raise BadInput("field 'input_batch' must be a non-empty list of inputs")
        if len(values) > max_items:
            raise BadInput(f"field 'input_batch' holds {len(values)} inputs, more than the limit of {max_items} "
                           "(max_items_per_query)")
        items = [_to_item(v, input_type, f"input_batch[{i}]", numbers) for i, v in enumerate(values)]
        batch = True
    else:
        raise BadInput("missing field 'input' (or 'input_batch')")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int)) or version == ""):
        raise BadInput("field 'version' must be a model version (a string or an integer)")
    return [m for m, _ in items], [f for _, f in items], batch, version


def output_json(meta: Any, frame: Any) -> Any:
    """An output item for :func:`json_response`: an array (orjson writes it), or a string.

    JSON has no NaN or infinity: orjson writes a non-finite float as ``null``
    (as JavaScript's JSON.stringify does), so every response is valid JSON.
    """
    kind = meta[0]
    buf = frame.buffer if hasattr(frame, "buffer") else frame
    if kind == "a":
        arr = np.frombuffer(buf, dtype=ALLOWED_DTYPES[meta[1]]).reshape(meta[2])
        return arr.tolist() if arr.ndim == 0 else arr
    raw = bytes(buf)
    if kind == "s":
        return raw.decode("utf-8", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _parse_unless_late(late_at: float, body: bytes, input_type: InputType, max_items: int) -> tuple | None:
    """:func:`parse_body`, on a parsing thread; None (not parsed) once it is past ``late_at``."""
    if time.monotonic() > late_at:
        return None
    return parse_body(body, input_type, max_items)


def _input_type(route: Route) -> InputType:
    """The input type queries of ``route`` must have: its model's, else its app's."""
    return route.queue.spec.input_type if route.queue is not None else route.app.spec.input_type


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

    def router(self) -> Router:
        """The endpoint's routes."""
        router = Router()
        router.add("POST", "/{app}/predict", self.predict, early=self.predict_early)
        router.add("GET", "/metrics", self.metrics)
        router.add("GET", "/metrics/prometheus", self.prometheus)
        router.add("GET", "/health", self.health)
        router.add("GET", "/health/live", self.live)
        router.add("GET", "/health/ready", self.ready)
        router.add("GET", "/replicas", self.replicas)
        return router

    def predict(self, request: Request) -> Response | Awaitable[Response | None] | None:
        """POST /<app>/predict with {"input": ...} or {"input_batch": [...]}.

        No task and no future: the query answers the request itself when it
        completes (:meth:`_done`). A big body is parsed off the loop (a task).
        """
        name = request.params["app"]
        config = self.fe.config
        try:
            route = self._route(name)
            input_type = _input_type(route)
            if len(request.body) > defaults.HTTP_PARSE_INLINE_BYTES:
                return self._predict_off_loop(request, name, input_type)
            self._submit(request, route, input_type,
                         parse_body(request.body, input_type, config.max_items_per_query))
        except SchoonerError as err:
            return error_response(err)
        return None

    def predict_early(self, request: Request) -> Response | None:
        """At a prediction's headers: 429 ``overloaded`` at once, its body dropped unread, when
        the frontend itself is behind: the wait to be read (``waited_s``) is over the share of
        the objective it allows (``wait_budget_s``), at the first such wait.

        Not only behind a standing queue, as over ZMQ (:meth:`AppRoute.behind`): refused here,
        a body is dropped unread, so refusing saves its parse, the frontend's main cost; and the
        waits of requests differ by connection (one just answered cannot have waited long), so
        one short wait says nothing of the others. With the standing rule here elastic-net's 80 KB
        bodies at 1,500 q/s got 2-8 q/s of goodput, against 130-390 q/s with this.

        A query's arrival is when its request came (``request.arrived``: read, less that wait),
        so admission at the model's queue counts the wait too; a big body is checked again
        before its parse starts, after its wait for a parsing thread (:meth:`_predict_off_loop`).
        Without these, a frontend offered more than its core parses (elastic-net's 84 KB JSON
        bodies at 3,000/s) stamped each request when it got to it, parsed every one, and every
        answer came seconds late. An app that answers overload with its default output gets
        it from admission, once its body is parsed.
        """
        waited = request.waited_s
        if waited < defaults.LOOP_LAG_FLOOR_S:
            return None
        route = self.fe.dispatcher.routes.get(request.params["app"])
        if route is None or route.queue is None or route.app.spec.on_overload != "reject":
            return None
        if waited < route.app.wait_budget_s:
            return None
        return self._refuse_late(route, waited)

    def _refuse_late(self, route: Route, waited_s: float) -> Response:
        """429 ``overloaded`` for a query that waited ``waited_s`` for the frontend, counted as shed."""
        return error_response(self.fe.dispatcher.refuse_behind(route, 1, waited_s, "read and parsed"))

    async def _predict_off_loop(self, request: Request, name: str, input_type: InputType) -> Response | None:
        """Parse a big body in a thread (it must not stall every other query), then submit.

        Parsing threads are few and a body waits for one: when the wait is over what the
        frontend allows (an app that rejects on overload), the parse is skipped and the query
        refused.
        """
        try:
            route = self._route(name)
            late_at = math.inf
            if request.arrived and route.queue is not None and route.app.spec.on_overload == "reject":
                late_at = request.arrived + route.app.wait_budget_s
            parsed = await asyncio.to_thread(_parse_unless_late, late_at, request.body, input_type,
                                             self.fe.config.max_items_per_query)
            route = self._route(name)  # the deployment may have changed meanwhile
            if parsed is None:
                if route.queue is not None:
                    return self._refuse_late(route, time.monotonic() - request.arrived)
                raise Overloaded("overloaded: the frontend is behind", self.fe.config.retry_after_s)
            if _input_type(route) is not input_type:
                raise BadInput(f"app {name!r} changed its input type while the request was parsed")
            self._submit(request, route, input_type, parsed)
        except SchoonerError as err:
            return error_response(err)
        return None

    def _submit(self, request: Request, route: Route, input_type: InputType, parsed: tuple) -> None:
        metas, frames, batch, version = parsed
        dispatcher = self.fe.dispatcher
        config = self.fe.config
        route = self._route_of_version(route, version)
        mq = route.queue
        validate_items(metas, frames, input_type, mq.input_shape if mq is not None else None,
                       config.max_input_bytes)
        now = time.monotonic()
        query = Query(dispatcher.next_query_id(), route.app, len(metas), min(now, request.arrived or now), self._done)
        query.peer = (request, batch)
        if mq is None:
            # Clipper answers an app with no model (or no current version) with its default output.
            log.debug("app %r: %s; answering its default output", request.params["app"], route.problem)
            query.expire(NO_MODEL_EXPLANATION)
            return
        dispatcher.submit(route, query, metas, frames, now)
        dispatcher.pump_dirty()

    def _route(self, name: str) -> Route:
        if not self.fe.dispatcher.ready:
            raise NotReady("the frontend has not loaded its apps and models yet", self.fe.config.retry_after_s)
        route = self.fe.dispatcher.routes.get(name)
        if route is None:
            raise UnknownApp(f"no app named {short(name)}")
        return route

    def _route_of_version(self, route: Route, version: Any) -> Route:
        """The route to ``version`` of the app's model when the body names one (Clipper's ``version``)."""
        if version is None:
            return route
        mq = self.fe.dispatcher.queues.get((route.model, str(version))) if route.model else None
        if mq is None:
            raise BadInput(f"field 'version': model {short(route.model)} of this app has no version "
                           f"{short(str(version))}" if route.model else "field 'version': this app has no linked model")
        return Route(route.app, mq)

    def _done(self, query: Query, err: SchoonerError | None) -> None:
        """The query's completion (exactly once): record it and answer its request."""
        self.fe.dispatcher.record(query, err)
        request, batch = query.peer
        if err is not None:
            request.reply(error_response(err))
        elif batch:
            request.reply(json_response({"batch_predictions": [_prediction(query, i) for i in range(query.n)]}))
        else:
            request.reply(json_response(_prediction(query, 0)))

    def metrics(self, request: Request) -> Response:
        """GET /metrics: Clipper JSON (values as strings, as Clipper writes them; numbers with
        ``?values=numbers``), or Prometheus text with ``?format=prometheus``."""
        if request.query.get("format") == "prometheus":
            return self.prometheus(request)
        dump = self.fe.metrics.dump()
        return json_response(dump if request.query.get("values") == "numbers" else clipper_strings(dump))

    def prometheus(self, request: Request) -> Response:
        """GET /metrics/prometheus: Prometheus text exposition (OpenMetrics if the Accept header asks)."""
        body, content_type = self.exposition.render(request.headers.get("accept"))
        return Response(body, content_type=content_type)

    def health(self, request: Request) -> Response:
        """GET /health: up, with counts of apps, models and live replicas, and whether it is ready."""
        fe = self.fe
        live = [r for r in fe.replicas() if r.state.live]
        return json_response({"status": "ok", "ready": fe.dispatcher.ready, "apps": len(fe.state.apps),
                              "models": len(fe.state.models), "live_replicas": len(live)})

    def live(self, request: Request) -> Response:
        """GET /health/live: 200 while the process serves HTTP (a liveness probe)."""
        return json_response({"status": "live"})

    def ready(self, request: Request) -> Response:
        """GET /health/ready: 200 once the apps and models are loaded (until then predict answers 503
        ``not_ready``), else 503 with Retry-After (a readiness probe)."""
        if self.fe.dispatcher.ready:
            return json_response({"status": "ready", "apps": len(self.fe.state.apps)})
        return json_response({"status": "not_ready"}, status=503,
                             headers={"Retry-After": str(max(1, math.ceil(self.fe.config.retry_after_s)))})

    def replicas(self, request: Request) -> Response:
        """GET /replicas: every replica's ReplicaInfo plus its model's queue depth."""
        out = []
        depths: dict[tuple[str, str], int] = {}  # counted once per model version, not once per replica
        for info in self.fe.replicas():
            row = dataclasses.asdict(info)
            row["input_type"] = info.input_type.value
            row["state"] = info.state.value
            key = (info.model_name, info.model_version)
            if key not in depths:
                depths[key] = self.fe.queue_depth(*key)
            row["queue_depth"] = depths[key]
            out.append(row)
        return json_response(out)
