"""A backend that wraps another and passes everything through; subclasses change what they must.

Redaction, retries with a circuit breaker, and the cascade each wrap a
target's backend and alter one or two of its calls. The rest of the
contract (name, model, capabilities, token counting, lifecycle, readiness,
gauges, model versions) goes straight to the wrapped backend, here, once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

from router.backends.base import Backend, Capabilities, Readiness
from router.backends.versions import ModelVersion, SwapResult, VersionedBackend, model_version
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.tokens import TokenCounter

__all__ = ["WrappingBackend"]


class WrappingBackend:
    """Passes every :class:`~router.backends.base.Backend` call to ``inner``.

    >>> from router.backends.fake import ScriptedBackend
    >>> WrappingBackend(ScriptedBackend("cloud")).name
    'cloud'
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    @property
    def token_counter(self) -> TokenCounter | None:
        return self.inner.token_counter

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def readiness(self) -> Readiness:
        return self.inner.readiness()

    def stats(self) -> Mapping[str, float]:
        return self.inner.stats()

    def model_version(self) -> ModelVersion | None:
        return model_version(self.inner)

    def swap_counts(self) -> Mapping[str, int]:
        return self.inner.swap_counts() if isinstance(self.inner, VersionedBackend) else {}

    async def refresh(self) -> SwapResult | None:
        return await self.inner.refresh() if isinstance(self.inner, VersionedBackend) else None

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self.inner.complete(request)

    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        return self.inner.stream(request)
