"""What every management API handler shares: app keys, errors as JSON, the body, the token, the store."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from management.api.body import Body
from management.errors import BadRequest, ManagementError, ManagerUnavailable, Unauthorized
from management.store import Store
from schooner.errors import error_body

log = logging.getLogger(__name__)

SUCCESS = "Success!"  # Clipper's answer to a successful write

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STORE_KEY = web.AppKey("store", Store)
MANAGER_KEY = web.AppKey("manager", object)
FRONTEND_URL_KEY = web.AppKey("frontend_http_url", str)
TOKEN_KEY = web.AppKey("admin_token", str)
MODEL_ROOTS_KEY = web.AppKey("model_roots", list)


def error_response(status: int, code: str, message: str) -> web.Response:
    """A JSON error answer ``{"error": code, "cause": message, "message": message}``."""
    return web.json_response(error_body(code, message), status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every ManagementError with its status and a JSON body; log the unexpected."""
    try:
        return await handler(request)
    except ManagementError as err:
        return error_response(err.status, err.code, str(err))
    except web.HTTPException:
        raise
    except Exception as err:  # noqa: BLE001 - a request must get an answer, not a dropped connection
        log.exception("unexpected error in %s", request.path)
        return error_response(500, "internal", f"{type(err).__name__}: {err}")


async def read_body(request: web.Request) -> Body:
    raw = await request.read()
    if not raw.strip():
        return Body({})
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise BadRequest(f"request body must be a JSON object: {err}") from err
    return Body(data)


def write(handler: Handler) -> Handler:
    """Mark a handler as a write: it needs the admin token when one is set."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[TOKEN_KEY]
        if token and request.headers.get("Authorization", "") != f"Bearer {token}":
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <admin token>'")
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


def store_of(request: web.Request) -> Store:
    return request.app[STORE_KEY]


def manager_of(request: web.Request) -> Any:
    manager = request.app[MANAGER_KEY]
    if manager is None:
        raise ManagerUnavailable("this management service runs without a replica manager")
    return manager


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking store call off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def spec(cls: type, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        raise BadRequest(str(err)) from err
