"""The backend contract: what the router needs from anything that answers.

A backend is one *target* (the edge model, a cloud endpoint). It must:

* answer a :class:`~router.chat.ChatRequest` in one piece (:meth:`Backend.complete`)
  or as a stream of OpenAI chunks (:meth:`Backend.stream`) whose **last chunk is
  always a usage chunk** (``choices == []`` and ``usage`` set), so token
  accounting works the same for every target whatever the caller asked for;
* say whether it can take a request right now (:meth:`Backend.readiness`);
* raise only :mod:`router.errors` errors, translated from its own.

:class:`router.backends.fake.ScriptedBackend` is the fake that ships beside it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from router.chat import ChatChunk, ChatRequest, ChatResult
from router.config import Capability
from router.tokens import TokenCounter

__all__ = ["Backend", "Capabilities", "Readiness", "capabilities_for"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a target can do; read by the ``capability`` and ``context_window`` policies.

    >>> Capabilities(tools=True, context_window=128_000).json_schema
    False
    """

    tools: bool = False
    json_schema: bool = False
    images: bool = False
    # Tokens the target accepts, prompt plus completion; None when unbounded or unknown.
    context_window: int | None = None
    # True when the target runs on this machine, so data sent to it stays here.
    local: bool = False


def capabilities_for(
    supports: Capability,
    *,
    tools: bool = True,
    json_schema: bool = True,
    images: bool = True,
    context_window: int | None = None,
    local: bool = False,
) -> Capabilities:
    """A target type's defaults, overridden by whatever the operator set under ``supports:``.

    >>> capabilities_for(Capability(images=False), json_schema=False).images
    False
    """
    return Capabilities(
        tools=tools if supports.tools is None else supports.tools,
        json_schema=json_schema if supports.json_schema is None else supports.json_schema,
        images=images if supports.images is None else supports.images,
        context_window=context_window,
        local=local,
    )


@dataclass(frozen=True, slots=True)
class Readiness:
    """A backend's state at one instant.

    ``busy`` is the transient "ready in principle, but the queue is full" state:
    the router spills such requests to another target when one is allowed.
    """

    ready: bool
    reason: str = "ready"
    busy: bool = False
    detail: Mapping[str, object] = field(default_factory=dict)

    @property
    def can_serve(self) -> bool:
        return self.ready and not self.busy


@runtime_checkable
class Backend(Protocol):
    """One target the router can send a request to."""

    name: str
    """The target's name in config, e.g. ``"edge"``."""

    model: str
    """The model it runs, reported in the answers' ``model`` field."""

    @property
    def capabilities(self) -> Capabilities:
        """What the target supports; may change once it has started (a loaded model's window)."""
        ...

    @property
    def token_counter(self) -> TokenCounter | None:
        """Counts a prompt's tokens exactly as this target will, once started; None where it cannot.

        A local model's own tokenizer is what the ``context_window`` policy
        should trust; cloud targets answer None and the router estimates.
        """
        ...

    async def start(self) -> None:
        """Acquire resources (load a model, open a connection pool). Called once."""

    async def aclose(self) -> None:
        """Release everything :meth:`start` acquired. Safe to call twice."""

    def readiness(self) -> Readiness:
        """Whether the backend can take a request now. Cheap: called per request."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answer ``request`` in one piece."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """Answer ``request`` as chunks, ending with a usage chunk.

        Closing the iterator early (client gone) must stop the work promptly.
        """
        ...

    def stats(self) -> Mapping[str, float]:
        """Live gauges (queue depth, active generations) for the metrics endpoint."""
        ...
