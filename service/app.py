"""The app factory: ``create_app(settings)`` builds a FastAPI app, doing no I/O.

Backends start (the edge model loads) in the lifespan and stop with it, so
importing this module, or building an app in a test, costs nothing.

    hybrid-router serve      # service/server.py: checks the settings are safe, then serves

``uvicorn --factory service.app:create_app`` also works, but without the
start-up safety checks and the connection deadlines of :mod:`service.server`.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.backends.base import Backend
from router.errors import GatewayOverloaded
from service.chat import chat_completions, chat_openapi, dry_run_route
from service.endpoints import healthz, list_models, metrics, readyz
from service.errors import error_response, install_error_handlers, openapi_errors
from service.gateway import Gateway
from service.reload import Reloader
from service.settings import ConfigSource, Settings

__all__ = ["PROBES", "RequestLimit", "create_app", "create_metrics_app"]


def create_app(
    settings: Settings | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    registry: CollectorRegistry | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    source: ConfigSource | None = None,
    reload_signal: signal.Signals | None = None,
) -> FastAPI:
    """Build the gateway app.

    ``backends`` replaces the configured targets (tests and demos inject
    :class:`~router.backends.fake.ScriptedBackend` here); ``backend_options``
    passes keyword arguments to configured adapters, e.g. an httpx transport.
    ``source`` is the config file the settings came from: it is watched and
    re-read on reload (without settings, they are loaded from it, by default
    from ``$HYBRID_ROUTER_CONFIG`` or the embedded default). ``reload_signal``
    (``serve`` passes SIGHUP) reloads too; it needs the main thread's loop.
    """
    if settings is None:
        source = source if source is not None else ConfigSource.resolve()
        settings = source.load()
    gateway = Gateway.from_settings(
        settings,
        backends=backends,
        registry=registry,
        backend_options=backend_options,
        environ=environ,
        source=source,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reloader = Reloader(gateway, on_signal=reload_signal)
        try:
            await gateway.start()
            reloader.start()
            yield
        finally:
            await reloader.aclose()
            await gateway.aclose()

    app = FastAPI(
        title="Hybrid Router",
        summary="An OpenAI-compatible gateway that routes each request to a local model or a cloud model.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    server = settings.server
    app.add_middleware(RequestLimit, limit=server.max_concurrent_requests, exempt=PROBES)
    body = chat_openapi(settings.limits)
    app.add_api_route(
        "/v1/chat/completions",
        chat_completions,
        methods=["POST"],
        openapi_extra=body,
        responses={**_CHAT_OK, **openapi_errors(400, 401, 403, 404, 408, 413, 429, 502, 503, 504)},
    )
    app.add_api_route(
        "/v1/route",
        dry_run_route,
        methods=["POST"],
        openapi_extra=body,
        responses=openapi_errors(400, 401, 408, 413, 503),
    )
    app.add_api_route("/v1/models", list_models, methods=["GET"], responses=openapi_errors(401, 503))
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"], responses=_READYZ_UNAVAILABLE)
    if server.metrics_port is None:
        _add_metrics_route(app, server.metrics_auth)
    return app


def create_metrics_app(gateway: Gateway) -> FastAPI:
    """``/metrics`` alone, for ``server.metrics_port``: served on loopback, beside the main app."""
    app = FastAPI(title="Hybrid Router metrics", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    install_error_handlers(app)
    _add_metrics_route(app, gateway.settings.server.metrics_auth)
    return app


def _add_metrics_route(app: FastAPI, needs_auth: bool) -> None:
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {}}, "description": "Prometheus text."}
    }
    if needs_auth:
        responses.update(openapi_errors(401))
    app.add_api_route("/metrics", metrics, methods=["GET"], response_class=Response, responses=responses)


# Probes answer even when the gateway is at its request cap: an orchestrator must not restart a busy gateway.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

_CHAT_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A `chat.completion`, or with `stream: true` a stream of `chat.completion.chunk` events.",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
    }
}
_READYZ_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "No target can serve.", "content": {"application/json": {"schema": {"type": "object"}}}}
}


class RequestLimit:
    """At most ``limit`` requests in flight; above it, 503 in OpenAI's shape with ``Retry-After``, at once.

    It counts requests, not connections, so sockets that stall before sending
    a request head (slowloris, bounded by ``server.header_timeout_s``) never
    push a real request out. Paths in ``exempt`` are neither counted nor refused.
    """

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[str] = frozenset()) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            error = GatewayOverloaded(f"The gateway is serving its limit of {self.limit} requests; retry shortly.")
            response = error_response(
                error.status_code, error.message, type_=error.type, code=error.code, headers={"retry-after": "1"}
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
