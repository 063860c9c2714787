"""The one relay loop: upstream stream events in, OpenAI chunks out, through a :class:`Translator`.

Every adapter reads its upstream's stream as a sequence of events (SSE
events, or AWS event-stream messages for Bedrock) and hands each to its
translator, which answers with the OpenAI chunks that event makes, built
through :class:`~router.backends._output.StreamOutput` so the output rules
hold. When the upstream ends its stream, :meth:`Translator.close` checks
that it ended properly and gives the closing chunks (the usage chunk last).

>>> import asyncio
>>> async def lines():
...     for line in ["event: ping", "data: {}", "", ": comment", "data: a", "data: b", ""]:
...         yield line
>>> async def events():
...     return [event async for event in iter_sse(lines())]
>>> asyncio.run(events())
[SseEvent(name='ping', data='{}'), SseEvent(name='', data='a\\nb')]
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from router.chat import ChatChunk
from router.errors import UpstreamProtocolError

__all__ = ["SseEvent", "Translator", "decode_event", "iter_sse", "relay"]

E_contra = TypeVar("E_contra", contravariant=True)
E = TypeVar("E")


class Translator(Protocol[E_contra]):
    """Turns one upstream stream, event by event, into OpenAI chunks.

    A translator raises our errors (an upstream error event, a malformed
    event) without naming the target: the backend adds the name.
    """

    def feed(self, event: E_contra) -> list[ChatChunk]:
        """The chunks ``event`` makes; often none."""
        ...

    def close(self) -> list[ChatChunk]:
        """The closing chunks once the upstream has ended its stream, usage last.

        Raises :class:`~router.errors.UpstreamProtocolError` when the stream
        ended before the upstream's last event.
        """
        ...


async def relay(events: AsyncIterable[E], translator: Translator[E]) -> AsyncIterator[ChatChunk]:
    """Yield each event's chunks as soon as the event arrives, then the closing chunks."""
    async for event in events:
        for chunk in translator.feed(event):
            yield chunk
    for chunk in translator.close():
        yield chunk


class SseEvent(NamedTuple):
    """One server-sent event; ``name`` is ``""`` when the event is unnamed."""

    name: str
    data: str


async def iter_sse(lines: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    """The server-sent events in ``lines``.

    Follows the WHATWG rules that matter for LLM APIs: blank lines end an
    event, multi-line ``data`` is joined by ``\\n``, comments are ignored.
    """
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield SseEvent(event, "\n".join(data))


def decode_event(data: str | bytes) -> dict[str, Any]:
    """A stream event's JSON object; anything else is the upstream breaking its protocol."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError("the upstream sent an invalid stream event") from exc
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError("the upstream sent an invalid stream event")
    return parsed
