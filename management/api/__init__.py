"""The management REST API: Clipper's /admin/... endpoints plus Schooner's replica and batching ones.

Every endpoint is ``POST`` with a JSON body, except ``GET /admin/ping`` and
``GET /admin/metrics``. Errors answer JSON ``{"error": code, "message": ...}``:
400 for a bad body (naming the field and the type it must have), 401 for a
write without the admin token, 404 for an unknown app/model/replica, 409 for a
conflict, 503 when Redis (or the replica manager) is not available, 504 when
``set_num_replicas``'s ``wait_s`` runs out before every replica is ready (they
keep starting), 500 when a backend cannot start a replica, 502 when
``/admin/metrics`` cannot reach the frontend.

Decisions where Clipper is silent or differs: successful writes answer Clipper's
``Success!`` text; unknown names are 404 (Clipper answers 400 or ``{}``); the
admin token guards writes only (reads stay open, as in Clipper); an app links to
exactly one model; ``model_version`` may be an int or a string and is kept as a
string; ``model_version`` omitted on Schooner's endpoints means the current one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schooner.cli import add_pid_header
from management.api import dashboard as _api_dashboard, registry as _api_registry, replicas as _api_replicas
from management.api import uploads as _api_uploads
from management.api.common import (FRONTEND_URL_KEY, MANAGER_KEY, MODEL_ROOTS_KEY, STORE_KEY, SUCCESS,
                                    TOKEN_KEY, errors_middleware)
from management.api.registry import app_info, model_info
from management.errors import ManagerUnavailable
from management.store import Store

__all__ = ["FRONTEND_URL_KEY", "MANAGER_KEY", "MODEL_ROOTS_KEY", "STORE_KEY", "SUCCESS", "TOKEN_KEY", "ManagerUnavailable",
           "app_info", "make_app", "model_info"]


def make_app(store: Store, manager: Any, *, frontend_http_url: str, admin_token: str = "",
             model_roots: list[str] | tuple[str, ...] = ()) -> web.Application:
    """The aiohttp application serving the management API.

    ``manager`` is a ``management.manager.ReplicaManager`` or None (then the
    replica endpoints answer 503); ``frontend_http_url`` is where
    ``/admin/metrics`` fetches the frontend's metrics; ``model_roots`` are the
    directories model files may be named in (none: no model files at all).
    """
    if not isinstance(store, Store):
        raise TypeError(f"store must be a management.store.Store, got {type(store).__name__}")
    if not isinstance(frontend_http_url, str) or not frontend_http_url.startswith(("http://", "https://")):
        raise ValueError(f"frontend_http_url must be an http:// URL, got {frontend_http_url!r}")
    if not isinstance(admin_token, str):
        raise TypeError("admin_token must be a string")
    app = web.Application(middlewares=[errors_middleware])
    app[STORE_KEY] = store
    app[MANAGER_KEY] = manager
    app[FRONTEND_URL_KEY] = frontend_http_url.rstrip("/")
    app[TOKEN_KEY] = admin_token
    app[MODEL_ROOTS_KEY] = [str(r) for r in model_roots]
    _api_registry.register(app)
    _api_replicas.register(app)
    _api_uploads.register(app)
    _api_dashboard.register(app)
    app.on_response_prepare.append(add_pid_header)
    return app
