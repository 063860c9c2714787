"""Server-sent events that stop the work when the client goes away.

Starlette's ``StreamingResponse`` only notices a vanished client when a write
fails, which may be many tokens later (or never, for a slow model). Here a
second task waits for ``http.disconnect`` and cancels the producer at once,
so an edge generation stops within one decode step and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "ClientGone", "EventStreamResponse", "cancel_on_disconnect", "sse_event"]

DONE = b"data: [DONE]\n\n"
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``; cancel it and raise :class:`ClientGone` if the client leaves first.

    The watcher cancels the work from a done-callback rather than through
    ``asyncio.wait``, which would build a waiter and two callbacks per request;
    and cancelling this coroutine (a deadline) cancels the work with it.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    watcher.add_done_callback(lambda done: done.cancelled() or task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


class EventStreamResponse(Response):
    """An ASGI response streaming ``events`` as ``text/event-stream``."""

    def __init__(
        self, events: AsyncIterator[bytes], headers: Mapping[str, str], on_close: Callable[[], None] | None = None
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
            try:
                await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
                if not pump.done():
                    pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pump
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _pump(self, send: Send) -> None:
        try:
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
