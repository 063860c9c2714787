"""Local-first cascade: answer on the edge, escalate to the cloud when the answer looks unsure.

FrugalGPT / AutoMix style. :class:`CascadeBackend` wraps two backends for
one request (built by :meth:`router.router.Router.backend_for` when the
``cascade`` policy chose the edge): it asks ``first`` for a whole answer
with per-token log-probabilities, scores the answer's confidence, and keeps
it when the confidence reaches ``threshold``; otherwise it asks ``then``
and answers with that.

Streaming buffers the first answer: the client's stream starts only once
the confidence is known, with either the buffered answer replayed as
chunks or the escalation target's own stream relayed. So a cascaded stream
gives up the edge's early first token; that is the price of not showing the
client an answer that is then withdrawn.

After the first output, :attr:`CascadeBackend.outcome` says what happened,
for the response headers and the metrics (the edge seconds an escalation
wasted, and its tokens).

>>> import asyncio
>>> from router.backends.fake import ScriptedBackend, ScriptedReply
>>> from router.chat import ChatRequest
>>> edge = ScriptedBackend("edge", ScriptedReply(text="Lyon?", token_logprobs=[-2.5, -1.0]))
>>> cascade = CascadeBackend(edge, ScriptedBackend("cloud", ScriptedReply(text="Paris.")), threshold=-1.5)
>>> req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Capital of France?"}]})
>>> asyncio.run(cascade.complete(req)).body["choices"][0]["message"]["content"]
'Paris.'
>>> cascade.outcome.describe()
'escalated edge->cloud (confidence -1.75 < -1.50)'
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from router.backends.base import Backend
from router.backends.wrapping import WrappingBackend
from router.chat import ChatChunk, ChatRequest, ChatResult, ChunkMaker, Usage

__all__ = ["SERVE_GREEDY", "WANT_TOKEN_LOGPROBS", "CascadeBackend", "CascadeOutcome", "Signal", "confidence", "replay"]

WANT_TOKEN_LOGPROBS = "want_token_logprobs"
"""Key in :attr:`ChatRequest.memo`: set, a backend that can report its answer's
token log-probabilities (:attr:`ChatResult.token_logprobs`) does; they cost the
edge a logits copy per decode step, so only a cascade asks."""

SERVE_GREEDY = "serve_greedy"
"""Key in :attr:`ChatRequest.memo`: set, a local backend decodes greedily when the request sets no
``temperature``: a distilled student's confidence gate was calibrated on its greedy answers."""

Signal = Literal["mean", "min"]


def confidence(token_logprobs: Sequence[float] | None, signal: Signal = "mean") -> float | None:
    """An answer's confidence from its tokens' log-probabilities; None when there are none.

    >>> confidence([-0.5, -1.5]), confidence([-0.5, -1.5], "min"), confidence(None)
    (-1.0, -1.5, None)
    """
    if not token_logprobs:
        return None
    return statistics.fmean(token_logprobs) if signal == "mean" else min(token_logprobs)


@dataclass(frozen=True, slots=True)
class CascadeOutcome:
    """What the cascade did for one request."""

    first: str
    then: str
    escalated: bool
    confidence: float | None
    threshold: float
    # Seconds and tokens the first target spent; wasted when escalated.
    first_seconds: float
    first_usage: Usage
    # Why escalation was off for this request ("personal data must stay on this machine"); "" when allowed.
    blocked: str = ""

    @property
    def target(self) -> str:
        """The target whose answer the client got."""
        return self.then if self.escalated else self.first

    def describe(self) -> str:
        """One line for the ``x-route-cascade`` header and the log."""
        if self.confidence is None:
            return f"kept {self.first} (no confidence reported)"
        low = self.confidence < self.threshold
        comparison = f"confidence {self.confidence:.2f} {'<' if low else '>='} {self.threshold:.2f}"
        if self.escalated:
            return f"escalated {self.first}->{self.then} ({comparison})"
        if low and self.blocked:
            return f"kept {self.first} ({comparison}; not escalated: {self.blocked})"
        return f"kept {self.first} ({comparison})"


class CascadeBackend(WrappingBackend):
    """Wraps ``first`` and ``then`` for one request: ``then`` answers only when ``first`` was unsure.

    ``then`` is None when escalation is not allowed for this request
    (``blocked`` says why): the first answer is kept whatever its
    confidence, and the outcome records that it would have escalated.
    Everything but answering (readiness, capabilities, ...) is ``first``'s.
    """

    def __init__(
        self,
        first: Backend,
        then: Backend | None,
        *,
        threshold: float,
        signal: Signal = "mean",
        then_name: str | None = None,
        blocked: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if then is None and not blocked:
            raise ValueError("a cascade without an escalation target must say why (blocked)")
        super().__init__(first)
        self.first = first
        self.then = then
        self.threshold = threshold
        self.signal = signal
        self.then_name = then_name or (then.name if then is not None else "none")
        self.blocked = blocked
        self.outcome: CascadeOutcome | None = None
        self._clock = clock

    async def _first_answer(self, request: ChatRequest) -> tuple[ChatResult, Backend | None]:
        """The first target's answer, and the backend to escalate to (None to keep the answer)."""
        request.memo[WANT_TOKEN_LOGPROBS] = True
        started = self._clock()
        result = await self.first.complete(request)
        score = confidence(result.token_logprobs, self.signal)
        escalate = score is not None and score < self.threshold and self.then is not None
        self.outcome = CascadeOutcome(
            first=self.first.name,
            then=self.then_name,
            escalated=escalate,
            confidence=score,
            threshold=self.threshold,
            first_seconds=self._clock() - started,
            first_usage=result.usage,
            blocked=self.blocked,
        )
        return result, self.then if escalate else None

    async def complete(self, request: ChatRequest) -> ChatResult:
        result, then = await self._first_answer(request)
        if then is None:
            return result
        assert self.outcome is not None
        answer = await then.complete(request)
        if answer.first_token_s is None:
            return answer
        # The client waited for the first answer too.
        return replace(answer, first_token_s=self.outcome.first_seconds + answer.first_token_s)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        result, then = await self._first_answer(request)
        if then is None:
            for chunk in replay(result):
                yield chunk
            return
        chunks = then.stream(request)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()


def replay(result: ChatResult) -> list[ChatChunk]:
    """A finished answer as the chunks of a stream: role and content, tool calls, finish, usage."""
    body = result.body
    chunks = ChunkMaker(str(body.get("id")), str(body.get("model")), int(body.get("created") or time.time()))
    choice: dict[str, Any] = (body.get("choices") or [{}])[0]
    message: dict[str, Any] = choice.get("message") or {}
    out = [chunks.delta({"role": "assistant", "content": message.get("content") or ""})]
    if message.get("tool_calls"):
        out.append(chunks.delta({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}))
    out.append(chunks.delta({}, choice.get("finish_reason") or "stop"))
    out.append(chunks.usage(result.usage))
    return out
