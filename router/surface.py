"""The outgoing surface: every string an upstream would receive for a request.

Privacy is only as good as the list of places it looks. This module is the
one definition of that list, and both personal-data detection and redaction
read it, so they cannot disagree about what leaves the machine:

* every message of every role, and every part of it: text, ``refusal``,
  image and file URLs, file names, and any field nobody has heard of yet;
* message ``name``, ``tool_calls`` (names and arguments), legacy
  ``function_call``, ``tool_call_id``;
* ``tools`` and ``functions`` (descriptions, parameter schemas, defaults,
  enums), ``tool_choice``, ``response_format`` schemas;
* ``user``, ``metadata``, ``stop``, ``prediction``, and every unknown
  top-level field (a target may forward them).

Each string becomes one :class:`SurfaceField`, addressed by its path into
the request body. Dict keys are fields too (``{"jo@x.io": ...}``), except
the API's and JSON Schema's own words, and so are integers long enough to
hold a number that identifies someone.
Values that cannot be read as text (image, audio and file bytes in ``data:``
URLs or base64 parts) are listed in :attr:`Surface.uninspectable` instead,
for the privacy policy to decide on.

The detector runs once over :attr:`Surface.text`, all fields joined by
newlines, so context carries across fields and parts ("My SSN is" in one
part, the number in the next). :meth:`Surface.locate` maps the spans it
finds back onto fields; redaction then replaces exactly those spans.

>>> from router.chat import ChatRequest
>>> request = ChatRequest.model_validate(
...     {"messages": [{"role": "user", "content": "hi"}], "user": "jo@x.io", "metadata": {"k": "v"}}
... )
>>> [f.label for f in outgoing_surface(request).fields]
['messages[0].content', 'user', 'metadata.k (key)', 'metadata.k']
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from router.chat import ChatRequest, Message
from router.features import Span, Uninspectable

__all__ = ["Path", "Surface", "SurfaceField", "Uninspectable", "outgoing_surface", "path_label"]

Path = tuple[str | int, ...]
"""Keys and list indexes from the request body's root down to one value."""

# Fields of ChatRequest that never reach an upstream as given (``model`` is
# replaced by the target's own model) or are numbers and flags, not text.
_NOT_FORWARDED_OR_NOT_TEXT = frozenset(
    {"model", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "n"}
)
# Structural keys whose values the API draws from a fixed list ("text",
# "image_url", "function", "low"); skipped only when they look like such a name.
_ENUM_KEYS = frozenset({"role", "type", "detail", "format"})
_ENUM_VALUE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Dict keys are scanned like values (a metadata key or a schema property can
# be an address or a key), except the API's and JSON Schema's own vocabulary.
_API_KEYS = frozenset(
    """
    role content name type text image_url input_audio file url detail data format file_id file_data filename
    refusal tool_calls tool_call_id id function arguments function_call audio
    tools functions tool_choice parameters description strict response_format json_schema schema properties
    required items enum default title anyOf allOf oneOf not const examples additionalProperties minimum maximum
    minLength maxLength pattern minItems maxItems $ref $defs definitions nullable
    metadata user stop prediction stream_options include_usage logit_bias logprobs top_logprobs
    """.split()  # noqa: SIM905 - a word list reads better as text
)
# Integers that short cannot hold a card, phone, account or id number.
_SMALLEST_SCANNED_INT = 100_000
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
# Payloads that are bytes (base64) whatever their prefix, by (parent key, key).
_BYTE_PAYLOADS = {("input_audio", "data"): "audio", ("audio", "data"): "audio", ("file", "file_data"): "file"}


def path_label(path: Path) -> str:
    """``("messages", 0, "content")`` -> ``"messages[0].content"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True, slots=True)
class SurfaceField:
    """One string that would leave the machine.

    ``role`` is the sending message's role, when the field belongs to a
    message (the system prompt is the operator's; user turns are the user's).
    ``is_key`` marks a dict key rather than a value; ``identifier`` marks a
    place where the API only accepts identifier characters (message and
    function names), so redaction must use a placeholder made of them.
    """

    path: Path
    text: str
    role: str | None = None
    is_key: bool = False
    identifier: bool = False
    # The value was an integer, scanned as its decimal digits.
    number: bool = False

    @property
    def label(self) -> str:
        return path_label(self.path) + (" (key)" if self.is_key else "")


@dataclass(frozen=True)
class Surface:
    """All outgoing strings of one request, and one text joining them for the detector."""

    fields: tuple[SurfaceField, ...]
    uninspectable: tuple[Uninspectable, ...] = ()
    text: str = field(init=False)
    _starts: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        starts, offset = [], 0
        for item in self.fields:
            starts.append(offset)
            offset += len(item.text) + 1  # the joining newline
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "text", "\n".join(item.text for item in self.fields))

    def by_label(self) -> dict[str, SurfaceField]:
        return {item.label: item for item in self.fields}

    def locate(self, spans: Sequence[Span]) -> tuple[Span, ...]:
        """Spans over :attr:`text` as spans over the fields they cover (``Span.field`` set).

        A span that runs across the joining newline into the next field is
        cut into one piece per field, so each piece can be redacted in place.
        """
        out: list[Span] = []
        for span in spans:
            index = max(0, bisect.bisect_right(self._starts, span.start) - 1)
            while index < len(self.fields) and self._starts[index] < span.end:
                start = self._starts[index]
                end = start + len(self.fields[index].text)
                lo, hi = max(span.start, start), min(span.end, end)
                if lo < hi:
                    out.append(replace(span, start=lo - start, end=hi - start, field=self.fields[index].label))
                index += 1
        return tuple(out)


def outgoing_surface(request: ChatRequest) -> Surface:
    """The request's :class:`Surface`, computed once and kept on the request."""
    cached = request.memo.get("surface")
    if isinstance(cached, Surface):
        return cached
    collector = _Collector()
    for index, message in enumerate(request.messages):
        collector.message(("messages", index), message)
    for name in type(request).model_fields:
        if name != "messages" and name not in _NOT_FORWARDED_OR_NOT_TEXT:
            collector.value((name,), getattr(request, name), None)
    collector.value((), request.model_extra or {}, None)
    surface = Surface(tuple(collector.fields), tuple(collector.uninspectable))
    request.memo["surface"] = surface
    return surface


class _Collector:
    def __init__(self) -> None:
        self.fields: list[SurfaceField] = []
        self.uninspectable: list[Uninspectable] = []

    def message(self, path: Path, message: Message) -> None:
        role = message.role
        content = message.content
        if isinstance(content, str):
            self._text((*path, "content"), content, role)
        elif isinstance(content, list):
            self.value((*path, "content"), content, role)
        if message.name is not None:
            self._text((*path, "name"), message.name, role, identifier=True)
        for name in ("tool_calls", "tool_call_id"):
            self.value((*path, name), getattr(message, name), role)
        self.value(path, message.model_extra or {}, role)

    def value(self, path: Path, value: object, role: str | None, parent_key: str = "") -> None:
        if value is None or isinstance(value, bool | float):
            return
        if isinstance(value, str):
            if parent_key in _ENUM_KEYS and _ENUM_VALUE.fullmatch(value):
                return
            bytes_kind = _BYTE_PAYLOADS.get((str(path[-2]), parent_key)) if len(path) >= 2 else None
            if bytes_kind is not None:
                self.uninspectable.append(Uninspectable(path_label(path), bytes_kind))  # type: ignore[arg-type]
                return
            self._text(path, value, role, identifier=parent_key == "name" and _names_a_function(path))
        elif isinstance(value, int):
            if abs(value) >= _SMALLEST_SCANNED_INT:
                self.fields.append(SurfaceField(path, str(value), role, number=True))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                key = str(key)
                if key not in _API_KEYS:
                    self.fields.append(SurfaceField((*path, key), key, role, is_key=True))
                self.value((*path, key), item, role, parent_key=key)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                self.value((*path, index), item, role, parent_key=parent_key)
        elif hasattr(value, "model_dump"):  # a nested pydantic model, e.g. stream_options
            self.value(path, value.model_dump(exclude_none=True), role, parent_key)

    def _text(self, path: Path, text: str, role: str | None, *, identifier: bool = False) -> None:
        if not text:
            return
        data_url = _DATA_URL.match(text)
        if data_url is not None:
            mime = (data_url.group(1) or "").lower()
            kind = "image" if mime.startswith("image/") else "audio" if mime.startswith("audio/") else "file"
            self.uninspectable.append(Uninspectable(path_label(path), kind))  # type: ignore[arg-type]
            return
        self.fields.append(SurfaceField(path, text, role, identifier=identifier))


def _names_a_function(path: Path) -> bool:
    # tools[i].function.name, tool_calls[i].function.name and the legacy
    # functions[i].name only accept [a-zA-Z0-9_-].
    return (len(path) >= 2 and path[-2] in ("function", "function_call")) or (
        len(path) >= 3 and path[-3] == "functions"
    )
