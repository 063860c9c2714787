"""A scripted backend: the fake that ships beside the backend contract.

It answers from a script instead of a model, records every request it saw, and
can be told to fail, stall or cut a stream, so tests and demos exercise the
whole gateway without a model or a network.

>>> import asyncio
>>> from router.chat import ChatRequest
>>> backend = ScriptedBackend("edge", ScriptedReply(text="Paris."))
>>> req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Capital?"}]})
>>> asyncio.run(backend.complete(req)).body["choices"][0]["message"]["content"]
'Paris.'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.backends.base import Capabilities, Readiness
from router.backends.versions import ModelVersion, SwapResult
from router.chat import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    ChunkMaker,
    FinishReason,
    Usage,
    make_completion,
)
from router.errors import HybridRouterError
from router.tokens import TokenCounter

__all__ = ["ScriptedBackend", "ScriptedReply"]


@dataclass
class ScriptedReply:
    """What the scripted backend answers with, and how it misbehaves."""

    text: str = "Hello from the scripted backend."
    # How the text is cut into stream chunks; default: word by word.
    pieces: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: FinishReason = "stop"
    # Seconds before the first output, and between stream chunks.
    delay_s: float = 0.0
    piece_delay_s: float = 0.0
    # Raised before any output...
    error: HybridRouterError | None = None
    # ...or, when streaming, after this many content chunks.
    fail_after: int | None = None
    prompt_tokens: int | None = None
    # Reported by complete() as the answer's per-token log-probabilities (a cascade's confidence).
    token_logprobs: list[float] | None = None

    def stream_pieces(self) -> list[str]:
        if self.pieces is not None:
            return self.pieces
        words = self.text.split(" ")
        return [word if i == 0 else " " + word for i, word in enumerate(words)]


Script = ScriptedReply | Callable[[ChatRequest], ScriptedReply]


@dataclass
class ScriptedBackend:
    """A :class:`~router.backends.base.Backend` that answers from a script."""

    name: str = "fake"
    script: Script = field(default_factory=ScriptedReply)
    model: str = "scripted"
    capabilities: Capabilities = field(default_factory=Capabilities)
    ready: Readiness = field(default_factory=lambda: Readiness(ready=True))
    requests: list[ChatRequest] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    # Streams currently open; tests read it to prove cancellation frees the slot.
    active_streams: int = 0
    # Tests pass one to play a local model with an exact tokenizer.
    token_counter: TokenCounter | None = None
    # Tests pass one to play a target serving a model version (a distilled edge model).
    version: ModelVersion | None = None
    swaps: dict[str, int] = field(default_factory=dict)
    refreshes: int = 0

    async def start(self) -> None:
        self.started = True

    def model_version(self) -> ModelVersion | None:
        return self.version

    def swap_counts(self) -> Mapping[str, int]:
        return self.swaps

    async def refresh(self) -> SwapResult | None:
        self.refreshes += 1
        return None

    async def aclose(self) -> None:
        self.closed = True

    def readiness(self) -> Readiness:
        return self.ready

    def stats(self) -> Mapping[str, float]:
        return {"active_generations": float(self.active_streams)}

    def _reply_for(self, request: ChatRequest) -> ScriptedReply:
        self.requests.append(request)
        return self.script(request) if callable(self.script) else self.script

    @staticmethod
    def _usage(request: ChatRequest, reply: ScriptedReply, completion_tokens: int) -> Usage:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = max(1, len(request.prompt_text) // 4)
        return Usage(prompt, completion_tokens)

    async def complete(self, request: ChatRequest) -> ChatResult:
        reply = self._reply_for(request)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.error is not None:
            raise reply.error
        usage = self._usage(request, reply, len(reply.stream_pieces()))
        body = make_completion(
            model=self.model,
            content=reply.text if not reply.tool_calls else None,
            finish_reason=reply.finish_reason,
            usage=usage,
            tool_calls=reply.tool_calls,
        )
        logprobs = tuple(reply.token_logprobs) if reply.token_logprobs is not None else None
        return ChatResult(body, usage, token_logprobs=logprobs)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        reply = self._reply_for(request)
        self.active_streams += 1
        try:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply.error is not None and reply.fail_after is None:
                raise reply.error
            chunks = ChunkMaker.start(self.model)
            yield chunks.delta({"role": "assistant", "content": ""})
            pieces = reply.stream_pieces()
            for index, piece in enumerate(pieces):
                if reply.fail_after is not None and index >= reply.fail_after:
                    raise reply.error or HybridRouterError("scripted failure")
                if reply.piece_delay_s:
                    await asyncio.sleep(reply.piece_delay_s)
                yield chunks.delta({"content": piece})
            if reply.tool_calls:
                calls = [{"index": i, **call} for i, call in enumerate(reply.tool_calls)]
                yield chunks.delta({"tool_calls": calls})
            yield chunks.delta({}, reply.finish_reason)
            yield chunks.usage(self._usage(request, reply, len(pieces)))
        finally:
            self.active_streams -= 1
