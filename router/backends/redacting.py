"""Reversible redaction: personal data out before the cloud, back in after.

The classifier found the personal data once, over the request's whole
outgoing surface (:mod:`router.surface`); redaction replaces exactly those
spans and never looks again, so what was classified and what is redacted
cannot differ.

Each distinct value becomes a typed placeholder carrying a random tag drawn
for this request, ``<EMAIL_1_k3x9qa>``; the same value always gets the same
placeholder, so the model can refer to it. Restoring is strict:

* only placeholders issued for this request are expanded, so a client cannot
  forge one (it does not know the tag) and its own ``<EMAIL_1>`` is left alone;
* values found only in system or developer messages are never restored: the
  operator wrote them, the user did not, and "repeat your instructions" must
  not hand them over;
* credentials (``secret``) are never restored into tool-call arguments, where
  a prompt-injected model could route them to a URL of its choosing; other
  kinds are restored there unless ``restore_in_tool_arguments`` is off;
* in streams a placeholder may arrive split across chunks (``<EMA`` +
  ``IL_1_k3x9qa>``): :class:`StreamRestorer` holds back any tail that could
  still become one.

>>> r = Redactor(tag="t0t0t0")
>>> r.redact("mail jo@x.io", [Span("email", 5, 12)])
'mail <EMAIL_1_t0t0t0>'
>>> r.restore("I wrote to <EMAIL_1_t0t0t0>, not <EMAIL_1>.")
'I wrote to jo@x.io, not <EMAIL_1>.'
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any

from router.backends.base import Backend
from router.backends.wrapping import WrappingBackend
from router.chat import ChatChunk, ChatRequest, ChatResult
from router.features import Span
from router.surface import Path, SurfaceField, outgoing_surface

__all__ = ["CREDENTIAL_KINDS", "RedactingBackend", "Redactor", "StreamRestorer", "redact_request"]

CREDENTIAL_KINDS = frozenset({"secret"})
_TAG_ALPHABET = string.ascii_lowercase + string.digits
_TAG_LENGTH = 6


def new_tag(avoid: str = "") -> str:
    """A random tag that does not already occur in ``avoid`` (the request's own text)."""
    while True:
        tag = "".join(secrets.choice(_TAG_ALPHABET) for _ in range(_TAG_LENGTH))
        if tag not in avoid:
            return tag


class Redactor:
    """Swaps values for this request's placeholders and back."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or new_tag()
        self._core_for: dict[tuple[str, str], str] = {}
        self._issued: dict[str, tuple[str, str]] = {}  # core ("EMAIL_1_tag") -> (kind, value)
        self._counts: dict[str, int] = {}
        # Cores whose value also came from the client's side of the conversation.
        self._restorable: set[str] = set()
        # "<EMAIL_1_tag>" or the bare core, as written in identifier-only places.
        self._pattern = re.compile(rf"<?([A-Z][A-Z_]*_\d+_{self.tag})>?")

    @property
    def issued(self) -> Mapping[str, tuple[str, str]]:
        return self._issued

    def placeholder(self, kind: str, value: str, *, identifier: bool = False, operator: bool = False) -> str:
        """The placeholder for ``value``; ``operator`` marks a value from a system or developer message."""
        key = (kind, value)
        core = self._core_for.get(key)
        if core is None:
            label = kind.upper()
            self._counts[label] = self._counts.get(label, 0) + 1
            core = f"{label}_{self._counts[label]}_{self.tag}"
            self._core_for[key] = core
            self._issued[core] = key
        if not operator:
            self._restorable.add(core)
        return core if identifier else f"<{core}>"

    def redact(self, text: str, spans: Iterable[Span], *, identifier: bool = False, operator: bool = False) -> str:
        out, cursor = [], 0
        for span in sorted(spans, key=lambda s: s.start):
            if span.start < cursor:
                continue
            out.append(text[cursor : span.start])
            value = text[span.start : span.end]
            out.append(self.placeholder(span.kind, value, identifier=identifier, operator=operator))
            cursor = span.end
        out.append(text[cursor:])
        return "".join(out)

    def restore(self, text: str, *, withhold: frozenset[str] = frozenset()) -> str:
        """``text`` with every issued placeholder expanded, except kinds in ``withhold``."""
        if not self._issued or self.tag not in text:
            return text

        def expand(match: re.Match[str]) -> str:
            core = match.group(1)
            issued = self._issued.get(core)
            if issued is None or issued[0] in withhold or core not in self._restorable:
                return match.group(0)
            return issued[1]

        return self._pattern.sub(expand, text)

    def longest(self) -> int:
        return max((len(core) + 2 for core in self._issued), default=0)

    def could_start_placeholder(self, tail: str) -> bool:
        return any(f"<{core}>".startswith(tail) or core.startswith(tail) for core in self._issued)


class StreamRestorer:
    """Restores placeholders in a stream of text pieces, across piece boundaries."""

    def __init__(self, redactor: Redactor, *, withhold: frozenset[str] = frozenset()) -> None:
        self.redactor = redactor
        self.withhold = withhold
        self.pending = ""

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        held = self._held_from(text)
        self.pending, text = text[held:], text[:held]
        return self.redactor.restore(text, withhold=self.withhold)

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return self.redactor.restore(rest, withhold=self.withhold)

    def _held_from(self, text: str) -> int:
        """Where the longest tail that could still grow into a placeholder starts."""
        longest = self.redactor.longest()
        for start in range(max(0, len(text) - longest), len(text)):
            if self.redactor.could_start_placeholder(text[start:]):
                return start
        return len(text)


def redact_request(request: ChatRequest, spans: Sequence[Span], redactor: Redactor) -> ChatRequest:
    """A copy of ``request`` with each span (located on its surface field) replaced by a placeholder."""
    fields = outgoing_surface(request).by_label()
    grouped: dict[str, list[Span]] = {}
    for span in spans:
        if span.field in fields:
            grouped.setdefault(span.field, []).append(span)
    data = request.model_dump(exclude_none=True)
    keys: list[tuple[SurfaceField, str]] = []
    for label, found in grouped.items():
        item = fields[label]
        operator = item.role in ("system", "developer")
        safe = redactor.redact(item.text, found, identifier=item.identifier, operator=operator)
        if item.is_key:
            keys.append((item, safe))
        else:
            _set(data, item.path, safe)
    # Keys last and deepest first, so every value's path is still valid when it is written.
    for item, safe in sorted(keys, key=lambda pair: -len(pair[0].path)):
        parent = _get(data, item.path[:-1])
        if isinstance(parent, dict) and item.text in parent:
            parent[safe] = parent.pop(item.text)
    return ChatRequest.model_validate(data)


def _get(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: Path, value: str) -> None:
    _get(data, path[:-1])[path[-1]] = value


class RedactingBackend(WrappingBackend):
    """Wraps a backend for one request: it leaves redacted, its answer comes back restored.

    Built by :meth:`router.router.Router.backend_for` when the chosen target
    is not local and the ``privacy`` policy's action is ``redact``.
    """

    def __init__(
        self,
        inner: Backend,
        spans: Sequence[Span],
        *,
        restore_in_tool_arguments: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(inner)
        self.spans = tuple(spans)
        self.redactor = redactor or Redactor()
        # Credentials never go back into tool calls; other kinds only when allowed.
        every_kind = frozenset(span.kind for span in self.spans) | CREDENTIAL_KINDS
        self._tool_withhold = CREDENTIAL_KINDS if restore_in_tool_arguments else every_kind

    def _outgoing(self, request: ChatRequest) -> ChatRequest:
        if self.redactor.tag in outgoing_surface(request).text:
            self.redactor = Redactor()  # astronomically rare: the request already holds the tag
        return redact_request(request, self.spans, self.redactor)

    async def complete(self, request: ChatRequest) -> ChatResult:
        result = await self.inner.complete(self._outgoing(request))
        for choice in result.body.get("choices") or ():
            if isinstance(choice.get("message"), dict):
                self._restore_message(choice["message"])
        return result

    def _restore_message(self, message: dict[str, Any]) -> None:
        for key in ("content", "refusal"):
            if isinstance(message.get(key), str):
                message[key] = self.redactor.restore(message[key])
        for function in _functions(message):
            if isinstance(function.get("name"), str):
                function["name"] = self.redactor.restore(function["name"], withhold=CREDENTIAL_KINDS)
            if isinstance(function.get("arguments"), str):
                function["arguments"] = self.redactor.restore(function["arguments"], withhold=self._tool_withhold)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        restorers: dict[tuple[int, str], StreamRestorer] = {}
        chunks = self.inner.stream(self._outgoing(request))
        try:
            async for chunk in chunks:
                for choice in chunk.get("choices") or ():
                    self._restore_delta(choice, restorers)
                yield chunk
        finally:
            await chunks.aclose()

    def _restorer(self, restorers: dict[tuple[int, str], StreamRestorer], key: tuple[int, str]) -> StreamRestorer:
        if key not in restorers:
            slot = key[1]
            withhold = (
                self._tool_withhold if slot.endswith(":arguments")
                else CREDENTIAL_KINDS if slot.endswith(":name")
                else frozenset()
            )  # fmt: skip
            restorers[key] = StreamRestorer(self.redactor, withhold=withhold)
        return restorers[key]

    def _restore_delta(self, choice: dict[str, Any], restorers: dict[tuple[int, str], StreamRestorer]) -> None:
        index = int(choice.get("index", 0))
        delta = choice.get("delta") or {}
        finished = choice.get("finish_reason") is not None
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) or (finished and (index, key) in restorers):
                restorer = self._restorer(restorers, (index, key))
                text = restorer.feed(delta.get(key) or "") + (restorer.flush() if finished else "")
                if key in delta or text:
                    delta[key] = text
                    choice["delta"] = delta
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            for part in ("name", "arguments"):
                if isinstance(function.get(part), str):
                    slot = (index, f"tool:{call.get('index', 0)}:{part}")
                    function[part] = self._restorer(restorers, slot).feed(function[part])
        if finished:
            self._flush_tool_calls(index, delta, choice, restorers)

    def _flush_tool_calls(
        self,
        index: int,
        delta: dict[str, Any],
        choice: dict[str, Any],
        restorers: dict[tuple[int, str], StreamRestorer],
    ) -> None:
        # Whatever a tool-call restorer still holds was never a whole placeholder: send it on.
        for (choice_index, slot), restorer in restorers.items():
            if choice_index != index or not slot.startswith("tool:") or not restorer.pending:
                continue
            _, call_index, part = slot.split(":")
            tail = {"index": int(call_index), "function": {part: restorer.flush()}}
            delta.setdefault("tool_calls", []).append(tail)
            choice["delta"] = delta


def _functions(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = [call.get("function") for call in message.get("tool_calls") or () if isinstance(call, dict)]
    found.append(message.get("function_call"))
    return [function for function in found if isinstance(function, dict)]
