"""Fallback chains: when the chosen target fails before answering, the next allowed one answers.

:meth:`router.router.Router.backend_for` builds one :class:`FailoverBackend`
per request over the chosen target and its configured ``fallback`` targets,
minus those a policy forbids for this request (personal data never falls back
to the cloud), each non-local one wrapped to redact when the privacy policy
said redact. Each element is a target's long-lived (guarded) backend, so it
has already retried and consulted its circuit when its failure arrives here.

Which failures fall back (:func:`may_fall_back`): retryable ones (the
target's retries are spent, or its circuit is open, or the local queue is
full) and a rejected upstream key (our problem; another target can still
answer). Not a bad request or a content filter: the request itself was
refused, and trying elsewhere would get round a provider's safety filter.

Only before the first byte: a stream is committed to the target whose first
chunk arrived, and a later failure reaches the client as today (an SSE error
event, then ``[DONE]``). A fallback target that cannot serve now (circuit
open, busy, not ready) is skipped. When every target has failed, the last
failure is raised. :attr:`FailoverBackend.record` says who served and why it
fell back, for the response headers and the metrics.

>>> import asyncio
>>> from router.backends.fake import ScriptedBackend, ScriptedReply
>>> from router.chat import ChatRequest
>>> from router.errors import UpstreamRateLimited
>>> cloud = ScriptedBackend("cloud", ScriptedReply(error=UpstreamRateLimited("slow down")))
>>> edge = ScriptedBackend("edge", ScriptedReply(text="from the edge"))
>>> failover = FailoverBackend([("cloud", cloud), ("edge", edge)])
>>> req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
>>> asyncio.run(failover.complete(req)).body["choices"][0]["message"]["content"]
'from the edge'
>>> failover.record.served_by, failover.record.header, failover.record.reason
('edge', 'cloud->edge', 'upstream_rate_limited')
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field

from router.backends.base import Backend
from router.backends.wrapping import WrappingBackend
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.errors import HybridRouterError, UpstreamAuthError, UpstreamProtocolError

__all__ = ["FailoverBackend", "FailoverRecord", "Hop", "may_fall_back"]


def may_fall_back(error: HybridRouterError) -> bool:
    """Whether another target may answer a request that failed with ``error``."""
    return error.retryable or isinstance(error, UpstreamAuthError)


@dataclass(frozen=True, slots=True)
class Hop:
    """One target failed (``code``: its error's) and the chain moved on."""

    target: str
    code: str
    message: str


@dataclass
class FailoverRecord:
    """What one request's chain did: the targets that failed, those skipped, and who served."""

    first: str
    served_by: str | None = None
    failed: list[Hop] = field(default_factory=list)
    # Fallback targets not tried, and why (e.g. "not ready (circuit open: ...)").
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        """True when a target other than the chosen one was tried."""
        return len(self.failed) > 1 or (self.served_by is not None and self.served_by != self.first)

    @property
    def header(self) -> str:
        """``x-route-fallback``: ``<from>-><to>``, the chosen target and the one that answered (or last tried)."""
        last = self.served_by or (self.failed[-1].target if self.failed else self.first)
        return f"{self.first}->{last}"

    @property
    def reason(self) -> str:
        """``x-route-fallback-reason``: the chosen target's error code."""
        return self.failed[0].code if self.failed else ""


class FailoverBackend(WrappingBackend):
    """Tries ``chain`` (``(target name, backend)`` pairs, the chosen target first) in order, for one request.

    Everything but the calls is the chosen target's.
    """

    def __init__(self, chain: Sequence[tuple[str, Backend]]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one target")
        super().__init__(chain[0][1])
        self.chain = list(chain)
        self.name = self.chain[0][0]
        self.record = FailoverRecord(self.name)

    async def complete(self, request: ChatRequest) -> ChatResult:
        last: HybridRouterError | None = None
        for name, backend in self._candidates():
            try:
                result = await backend.complete(request)
            except HybridRouterError as exc:
                self._failed(name, exc)
                last = exc
                continue
            self.record.served_by = name
            return result
        assert last is not None
        raise last

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        last: HybridRouterError | None = None
        for name, backend in self._candidates():
            chunks = backend.stream(request)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamProtocolError(f"target {name}: the stream ended without output") from None
            except HybridRouterError as exc:
                await chunks.aclose()
                self._failed(name, exc)
                last = exc
                continue
            except BaseException:
                await chunks.aclose()
                raise
            self.record.served_by = name
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()
            return
        assert last is not None
        raise last

    def _candidates(self) -> Iterator[tuple[str, Backend]]:
        """The chain as it is tried, lazily: a fallback that cannot serve when its turn comes is skipped."""
        for index, (name, backend) in enumerate(self.chain):
            # The router chose the first knowing its readiness; a circuit that opened since refuses by itself.
            if index:
                state = backend.readiness()
                if not state.can_serve:
                    self.record.skipped[name] = (
                        f"busy ({state.reason})" if state.busy else f"not ready ({state.reason})"
                    )
                    continue
            yield name, backend

    def _failed(self, name: str, error: HybridRouterError) -> None:
        self.record.failed.append(Hop(name, error.code or "error", error.message))
        if not may_fall_back(error):
            raise error
