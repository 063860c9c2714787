"""What every provider emulator shares: typed scripted behaviours, the script queue and the control routes.

A test scripts how the emulator answers its next requests, one behaviour per
request, either in process (``state.script.add(AnthropicBehaviour(...))``) or
over HTTP (``POST /_emulator/script`` with a JSON object or a list of them).
Behaviours are frozen dataclasses, and :meth:`Behaviour.parse` refuses keys
they do not have, so a typo fails loudly instead of scripting the default
answer. ``GET /_emulator/requests`` returns what the emulator received and
``POST /_emulator/reset`` forgets it all.

Each emulator also counts the streams it is sending (``open_streams``), so a
test can see a client give a stream up: the count drops once the client
closes the connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "Behaviour",
    "EmulatorState",
    "Script",
    "control_routes",
    "parse_fields",
    "crash",
    "cut_at_stop",
    "pieces_of",
]


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How an emulator answers one request; every emulator's behaviour extends this one."""

    content: str | None = None
    """The answer text; ``"Echo: <last user text>"`` when None."""
    chunks: list[str] | None = None
    """How the text is cut into streamed pieces; word by word when None."""
    delay_s: float = 0.0
    """Seconds to wait before answering (before the headers)."""
    chunk_delay_s: float = 0.0
    """Seconds to wait before each streamed piece."""
    cut_after: int | None = None
    """Drop the connection after this many streamed text pieces."""
    malformed: bool = False
    """Answer with a body that is not the documented format."""
    status: int | None = None
    """Answer with this error status."""
    error: str = "emulated failure"
    """The error's message."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers on an error answer (``retry-after``)."""
    redirect_to: str | None = None
    """Answer ``307 Temporary Redirect`` to this URL, as a hijacked or misconfigured upstream might."""

    # Fields holding another behaviour-like dataclass, parsed from a nested mapping.
    nested: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self:
        """A behaviour from JSON-like data; unknown keys raise ``ValueError`` naming the known ones."""
        values = {
            key: cls.nested[key].parse(value) if key in cls.nested and isinstance(value, Mapping) else value
            for key, value in raw.items()
        }
        return parse_fields(cls, values)

    def pieces(self, default: str) -> list[str]:
        """The answer's streamed pieces: ``chunks``, else the text word by word (none when it is empty)."""
        if self.chunks is not None:
            return list(self.chunks)
        return pieces_of(default if self.content is None else self.content)

    async def before_answering(self) -> Response | None:
        """Wait ``delay_s``; then the redirect, when one is scripted, is the whole answer."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return None if self.redirect_to is None else Response(status_code=307, headers={"location": self.redirect_to})


B = TypeVar("B", bound=Behaviour)
D = TypeVar("D")


def parse_fields(kind: type[D], raw: Mapping[str, Any]) -> D:
    """``kind(**raw)`` for a dataclass, refusing keys it does not have with a message that lists the ones it does."""
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    if unknown := sorted(set(raw) - known):
        raise ValueError(f"{kind.__name__} has no {', '.join(unknown)}; it knows {', '.join(sorted(known))}")
    return kind(**raw)


def pieces_of(text: str) -> list[str]:
    """``text`` cut word by word, each piece keeping its trailing space."""
    if not text:
        return []
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]


def cut_at_stop(pieces: list[str], stops: Iterable[str]) -> tuple[list[str], str | None]:
    """The pieces up to the earliest stop sequence in their text, and that stop (None when none occurs)."""
    text = "".join(pieces)
    found = [(text.index(stop), stop) for stop in stops if stop and stop in text]
    if not found:
        return pieces, None
    cut, stop = min(found)
    kept, length = [], 0
    for piece in pieces:
        if length + len(piece) > cut:
            if cut > length:
                kept.append(piece[: cut - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept, stop


class Scripted(Protocol):
    """A scripted behaviour: built from JSON-like data, strictly, or with no arguments as the default."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self: ...


S = TypeVar("S", bound=Scripted)


class Script(Generic[S]):
    """The behaviours queued for the next requests, oldest first; the default behaviour when empty."""

    def __init__(self, kind: type[S]) -> None:
        self.kind = kind
        self._items: list[S] = []

    def add(self, *items: S | Mapping[str, Any]) -> None:
        """Queue behaviours, typed or as JSON-like data: all checked first, so a typo queues none of them."""
        typed = [self.typed(item) for item in items]
        self._items.extend(typed)

    def typed(self, item: S | Mapping[str, Any]) -> S:
        return item if isinstance(item, self.kind) else self.kind.parse(cast(Mapping[str, Any], item))

    def next(self) -> S:
        return self._items.pop(0) if self._items else self.kind()

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class EmulatorState(Generic[B]):
    """The script, the requests received, and the streams being sent."""

    def __init__(self, kind: type[B]) -> None:
        self.script = Script(kind)
        self.requests: list[dict[str, Any]] = []
        self.open_streams = 0

    def queue(self, items: list[Mapping[str, Any]]) -> None:
        """Queue behaviours posted to ``/_emulator/script``."""
        self.script.add(*items)

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()

    async def tracked(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, counted in ``open_streams`` until it ends or the client goes away."""
        self.open_streams += 1
        try:
            async for piece in body:
                yield piece
        finally:
            self.open_streams -= 1


def control_routes(state: EmulatorState[Any]) -> list[Route]:
    """``/_emulator/script``, ``/_emulator/requests`` and ``/_emulator/reset``."""

    async def script(request: Request) -> Response:
        items = await request.json()
        try:
            state.queue(items if isinstance(items, list) else [items])
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"queued": len(state.script)})

    async def requests(request: Request) -> Response:
        return JSONResponse(state.requests)

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route("/_emulator/script", script, methods=["POST"]),
        Route("/_emulator/requests", requests),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]


async def crash(pause_s: float = 0.2) -> None:
    """Drop the connection mid-stream, as a crashed upstream does.

    The pause first lets the client read what was sent: a reset that overtakes
    unread data makes the receiving kernel discard it, and tests would flake.
    """
    await asyncio.sleep(pause_s)
    raise ConnectionResetError("emulated upstream crash")
