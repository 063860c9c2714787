"""Fixtures of the spend-control suite: a gateway served in-process on loopback, and Redis (from the state suite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedBackend, ScriptedReply
from service.app import create_app
from service.gateway import Gateway
from service.settings import Settings
from tests.conftest import cloud_backend, edge_backend
from tests.state.conftest import redis_server  # noqa: F401  (the session's Redis, shared)
from tests.support import loopback

# A dollar a thousand tokens, in and out, so that small requests move a budget visibly.
PRICE = {"input": 1000.0, "output": 1000.0}


def spend_settings(**overrides: Any) -> Settings:
    """An edge (free) and a priced cloud; requests go to the cloud unless something rules it out."""
    values: dict[str, Any] = {
        "targets": {
            "edge": {"type": "fake", "reply": "edge says hi"},
            "cloud": {"type": "fake", "reply": "cloud says hi", "local": False, "price_per_mtok": PRICE},
        },
        "policies": [{"type": "explicit"}, {"type": "privacy", "on_personal_data": "edge"},
                     {"type": "default", "target": "cloud"}],
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


def priced_cloud(script: ScriptedReply | Callable[..., ScriptedReply] | None = None) -> ScriptedBackend:
    return cloud_backend(script or ScriptedReply(text="cloud says hi", prompt_tokens=10))


@asynccontextmanager
async def serving(
    settings: Settings, *, backends: dict[str, ScriptedBackend] | None = None, environ: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The gateway on a real loopback port in this event loop, and a client for it."""
    app = create_app(settings, backends=backends or {"edge": edge_backend(), "cloud": priced_cloud()},
                     registry=CollectorRegistry(), environ=environ or {})  # fmt: skip
    async with loopback.serving(app, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client, app.state.gateway


async def settled(gateway: Gateway) -> None:
    """Wait for the settlements in flight (they run after the response, in tasks of their own)."""
    for _ in range(200):
        await asyncio.sleep(0.005)  # a stream's settlement starts as its response closes, just after the client saw it
        await gateway.runtime.spend.drain()
        if not gateway.runtime.spend.pending:
            return
    raise AssertionError("settlements still running after 1 s")
