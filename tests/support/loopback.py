"""Serving a test's upstream on a real loopback socket, inside the test's event loop or a thread.

The fakes here are real HTTP servers (uvicorn on 127.0.0.1), so adapters are
tested through their real client stack, errors and streaming included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from tests.support.processes import free_port

Handler = Callable[[Request], Awaitable[Response]]


def handler_app(handler: Handler) -> Starlette:
    """An app sending every request, any path and method, to ``handler``."""
    return Starlette(routes=[Route("/{path:path}", handler, methods=["GET", "POST", "PUT", "DELETE"])])


def _server(app: ASGIApp, port: int, lifespan: str = "off") -> uvicorn.Server:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan=lifespan, loop="asyncio")
    return uvicorn.Server(config)


@asynccontextmanager
async def serving(app: ASGIApp, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve ``app`` in this event loop (its lifespan run with ``lifespan="on"``); yields its base URL."""
    port = free_port()
    server = _server(app, port, lifespan)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextmanager
def serving_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` from a background thread, for synchronous tests (TestClient, SDKs)."""
    port = free_port()
    server = _server(app, port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the loopback server failed to start")
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
