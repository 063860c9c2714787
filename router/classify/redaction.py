"""Reversible redaction: personal data out before the cloud, back in after.

Each distinct value becomes a typed placeholder, ``<EMAIL_1>``,
``<PHONE_2>``; the same value always gets the same placeholder within a
request, so the model can refer to it. Answers are restored by replacing
placeholders with the original values, in whole bodies and in streams,
where a placeholder may arrive split across chunks (``<EMA`` + ``IL_1>``):
:class:`StreamRestorer` holds back any tail that could still become one.

>>> r = Redactor()
>>> safe = r.redact("mail jo@x.io", [Span("email", 5, 12)])
>>> safe, r.restore("I wrote to <EMAIL_1>.")
('mail <EMAIL_1>', 'I wrote to jo@x.io.')
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from router.backends.base import Backend, Capabilities, Readiness
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.classify.personal_data import PersonalDataDetector, Span

__all__ = ["RedactingBackend", "Redactor", "StreamRestorer", "redact_request"]

_PLACEHOLDER = re.compile(r"<([A-Z_]+)_(\d+)>")
_PARTIAL = re.compile(r"<[A-Z_]*(?:_\d*)?$")


class Redactor:
    """Swaps values for placeholders and back, for one request."""

    def __init__(self) -> None:
        self._placeholder_for: dict[tuple[str, str], str] = {}
        self._value_for: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    @property
    def mapping(self) -> Mapping[str, str]:
        return self._value_for

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._placeholder_for:
            label = kind.upper()
            self._counts[label] = self._counts.get(label, 0) + 1
            placeholder = f"<{label}_{self._counts[label]}>"
            self._placeholder_for[key] = placeholder
            self._value_for[placeholder] = value
        return self._placeholder_for[key]

    def redact(self, text: str, spans: Sequence[Span]) -> str:
        out, cursor = [], 0
        for span in sorted(spans, key=lambda s: s.start):
            if span.start < cursor:
                continue
            out.append(text[cursor : span.start])
            out.append(self.placeholder(span.kind, text[span.start : span.end]))
            cursor = span.end
        out.append(text[cursor:])
        return "".join(out)

    def restore(self, text: str) -> str:
        if not self._value_for or "<" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._value_for.get(m.group(0), m.group(0)), text)


class StreamRestorer:
    """Restores placeholders in a stream of text pieces, across piece boundaries."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.pending = ""

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        tail = _PARTIAL.search(text)
        if tail is not None and len(text) - tail.start() <= self._longest:
            self.pending, text = text[tail.start() :], text[: tail.start()]
        else:
            self.pending = ""
        return self.redactor.restore(text)

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return self.redactor.restore(rest)

    @property
    def _longest(self) -> int:
        return max((len(p) for p in self.redactor.mapping), default=0)


def redact_request(request: ChatRequest, detector: PersonalDataDetector, redactor: Redactor) -> ChatRequest:
    """A copy of ``request`` whose message texts (and tool-call arguments) carry placeholders."""
    data = request.model_dump(exclude_none=True)

    def clean(text: str) -> str:
        return redactor.redact(text, detector.detect(text))

    for message in data["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = clean(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part.get("text"), str):
                    part["text"] = clean(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            if isinstance(function.get("arguments"), str):
                function["arguments"] = clean(function["arguments"])
    return ChatRequest.model_validate(data)


def _restore_message(message: dict[str, Any], redactor: Redactor) -> None:
    if isinstance(message.get("content"), str):
        message["content"] = redactor.restore(message["content"])
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        if isinstance(function.get("arguments"), str):
            function["arguments"] = redactor.restore(function["arguments"])


class RedactingBackend:
    """Wraps a backend: requests leave redacted, answers come back restored.

    Built per request by the router when the chosen target is not local and
    the ``privacy`` policy's action is ``redact``.
    """

    def __init__(self, inner: Backend, detector: PersonalDataDetector) -> None:
        self.inner = inner
        self.detector = detector
        self.redactor = Redactor()
        self.name = inner.name
        self.model = inner.model

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def readiness(self) -> Readiness:
        return self.inner.readiness()

    def stats(self) -> Mapping[str, float]:
        return self.inner.stats()

    async def complete(self, request: ChatRequest) -> ChatResult:
        result = await self.inner.complete(redact_request(request, self.detector, self.redactor))
        for choice in result.body.get("choices") or ():
            if isinstance(choice.get("message"), dict):
                _restore_message(choice["message"], self.redactor)
        return result

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        restorers: dict[tuple[int, str], StreamRestorer] = {}
        chunks = self.inner.stream(redact_request(request, self.detector, self.redactor))
        try:
            async for chunk in chunks:
                for choice in chunk.get("choices") or ():
                    self._restore_delta(choice, restorers)
                yield chunk
        finally:
            await chunks.aclose()

    def _restore_delta(self, choice: dict[str, Any], restorers: dict[tuple[int, str], StreamRestorer]) -> None:
        index = int(choice.get("index", 0))
        delta = choice.get("delta") or {}
        finished = choice.get("finish_reason") is not None
        if isinstance(delta.get("content"), str) or finished:
            restorer = restorers.setdefault((index, "content"), StreamRestorer(self.redactor))
            text = restorer.feed(delta.get("content") or "") + (restorer.flush() if finished else "")
            if "content" in delta or text:
                delta["content"] = text
                choice["delta"] = delta
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            if isinstance(function.get("arguments"), str):
                key = (index, f"tool:{call.get('index', 0)}")
                restorer = restorers.setdefault(key, StreamRestorer(self.redactor))
                function["arguments"] = restorer.feed(function["arguments"])
        if finished:
            # Whatever a tool-call restorer still holds was never a placeholder: send it as is.
            for (choice_index, slot), restorer in restorers.items():
                if choice_index == index and slot.startswith("tool:") and restorer.pending:
                    tail = {"index": int(slot[5:]), "function": {"arguments": restorer.flush()}}
                    delta.setdefault("tool_calls", []).append(tail)
                    choice["delta"] = delta
