"""The app factory: ``create_app(settings)`` builds a FastAPI app, doing no I/O.

Backends start (the edge model loads) in the lifespan and stop with it, so
importing this module, or building an app in a test, costs nothing.

    uvicorn --factory service.app:create_app      # embedded default config
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from router.backends.base import Backend
from service.chat import chat_completions, dry_run_route
from service.endpoints import healthz, list_models, metrics, readyz
from service.errors import install_error_handlers
from service.gateway import Gateway
from service.settings import Settings, load_settings

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    registry: CollectorRegistry | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """Build the gateway app.

    ``backends`` replaces the configured targets (tests and demos inject
    :class:`~router.backends.fake.ScriptedBackend` here); ``backend_options``
    passes keyword arguments to configured adapters, e.g. an httpx transport.
    """
    settings = settings if settings is not None else load_settings()
    gateway = Gateway.from_settings(
        settings, backends=backends, registry=registry, backend_options=backend_options, environ=environ
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
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
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=True)
    app.add_api_route("/v1/route", dry_run_route, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app
