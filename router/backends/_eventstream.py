"""Decoding AWS's binary event-stream framing (``application/vnd.amazon.eventstream``).

Each message is a prelude (total length, headers length, CRC32 of both),
typed headers, a payload and a CRC32 of the whole message. Messages arrive
in whatever pieces the network delivers: one read may hold half a frame or
several frames. botocore's ``EventStreamBuffer`` keeps the partial bytes
between reads and checks both checksums, so it does the parsing here; what
this module adds is the async loop, the three message types, and the
translation of framing faults into our error tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from router.errors import ConfigError, UpstreamProtocolError

__all__ = ["EVENT_STREAM", "Event", "iter_events", "require_botocore"]

EVENT_STREAM = "application/vnd.amazon.eventstream"

_HINT = "pip install 'hybrid-router[bedrock]'"


def require_botocore(module: str) -> Any:
    """Import a botocore module, failing start-up with an install hint when botocore is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"Bedrock targets need botocore ({module} is not importable): {_HINT}") from exc


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded message.

    ``message_type`` is ``event``, ``exception`` (a modelled error such as
    ``throttlingException``) or ``error`` (an unmodelled one); ``name`` is
    the event type, the exception type or the error code accordingly.
    """

    message_type: str
    name: str
    payload: bytes
    error_message: str = ""


def _event(headers: dict[str, Any], payload: bytes) -> Event:
    message_type = str(headers.get(":message-type", "event"))
    if message_type == "exception":
        return Event(message_type, str(headers.get(":exception-type", "")), payload)
    if message_type == "error":
        return Event(message_type, str(headers.get(":error-code", "")), payload, str(headers.get(":error-message", "")))
    return Event(message_type, str(headers.get(":event-type", "")), payload)


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Yield each complete message in ``chunks`` as soon as its last byte arrives."""
    eventstream = require_botocore("botocore.eventstream")
    buffer = eventstream.EventStreamBuffer()
    received = consumed = 0
    async for data in chunks:
        buffer.add_data(data)
        received += len(data)
        try:
            messages = list(buffer)
        except eventstream.ParserError as exc:
            raise UpstreamProtocolError(
                f"the upstream sent a corrupt event-stream frame ({type(exc).__name__})"
            ) from exc
        for message in messages:
            consumed += message.prelude.total_length
            yield _event(message.headers, message.payload)
    if received != consumed:
        raise UpstreamProtocolError("the upstream closed the stream inside an event-stream frame")
