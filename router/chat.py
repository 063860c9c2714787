"""The OpenAI chat-completions shapes every part of the router speaks.

Requests are validated once, at the edge of the service, into
:class:`ChatRequest`. Answers travel as plain dicts in OpenAI's
``chat.completion`` / ``chat.completion.chunk`` shapes: every backend has to
produce exactly those for the client anyway, and dicts serialise with orjson
without a second model layer on the hot path. The ``make_*`` helpers build
them so that every adapter fills the same fields.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

__all__ = [
    "ChatChunk",
    "ChatCompletion",
    "ChatRequest",
    "ChatResult",
    "Message",
    "StreamOptions",
    "Usage",
    "ChunkMaker",
    "make_completion",
    "new_completion_id",
]

ChatCompletion = dict[str, Any]
"""A body in OpenAI's ``chat.completion`` shape."""

ChatChunk = dict[str, Any]
"""One event in OpenAI's ``chat.completion.chunk`` shape."""

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Message(BaseModel):
    """One chat message; ``content`` is a string or a list of content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_a_type(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for index, part in enumerate(value):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {index} has no 'type'")
        return value

    def text(self) -> str:
        """The message's text: the string, or its text parts joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            str(part.get("text", "")) for part in self.content if part.get("type") in ("text", "input_text")
        )

    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(
            part.get("type") in ("image_url", "input_image") for part in self.content
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body.

    Unknown fields are kept (``model_extra``) so that targets which accept
    them can receive them; they never make validation fail.

    >>> req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    >>> req.model, req.effective_max_tokens, req.prompt_text
    ('auto', None, 'hi')
    """

    model_config = ConfigDict(extra="allow")

    model: str = "auto"
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    # OpenAI's seed is a 64-bit integer; a larger one would not survive re-encoding for an upstream.
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    # Values derived from this request by one component and reused by
    # another (e.g. the edge model's token ids: counted by the router, then
    # generated from), so nothing is computed twice.
    _memo: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def memo(self) -> dict[str, Any]:
        return self._memo

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(stop == "" for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def effective_max_tokens(self) -> int | None:
        """``max_completion_tokens`` if given, else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @cached_property
    def prompt_text(self) -> str:
        """All message text, joined; what classifiers and token counters read."""
        return "\n".join(message.text() for message in self.messages)

    @property
    def wants_json(self) -> bool:
        kind = (self.response_format or {}).get("type")
        return kind in ("json_object", "json_schema")

    @property
    def has_images(self) -> bool:
        return any(message.has_image() for message in self.messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one answer consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost_usd(self, price_input: float, price_output: float) -> float:
        """What these tokens cost at prices in USD per million tokens.

        >>> Usage(1000, 500).cost_usd(1.0, 4.0)
        0.003
        """
        return (self.prompt_tokens * price_input + self.completion_tokens * price_output) / 1e6

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_openai(cls, usage: object) -> Usage | None:
        """Read an OpenAI ``usage`` object; ``None`` when absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(prompt, completion)


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A finished non-streaming answer: the OpenAI body and its token counts.

    ``first_token_s`` is the seconds from the backend call to its first
    token, where the backend can tell (local models); None otherwise.
    ``token_logprobs`` are the answer's per-token log-probabilities, where the
    backend reports them when asked (the edge, for a cascade's confidence check).
    """

    body: ChatCompletion
    usage: Usage
    first_token_s: float | None = None
    token_logprobs: tuple[float, ...] | None = None


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def make_completion(
    *,
    model: str,
    content: str | None,
    finish_reason: FinishReason | None,
    usage: Usage,
    tool_calls: list[dict[str, Any]] | None = None,
    completion_id: str | None = None,
    created: int | None = None,
) -> ChatCompletion:
    """Build a one-choice ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id or new_completion_id(),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage.to_openai(),
    }


@dataclass(frozen=True, slots=True)
class ChunkMaker:
    """Builds the chunks of one stream, all sharing its id, model and creation time.

    >>> maker = ChunkMaker.start("m")
    >>> maker.delta({"content": "Hi"})["choices"][0]["delta"]
    {'content': 'Hi'}
    """

    completion_id: str
    model: str
    created: int

    @classmethod
    def start(cls, model: str) -> ChunkMaker:
        return cls(new_completion_id(), model, int(time.time()))

    def delta(self, delta: dict[str, Any], finish_reason: FinishReason | None = None) -> ChatChunk:
        """A one-choice ``chat.completion.chunk``."""
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def usage(self, usage: Usage) -> ChatChunk:
        """The closing chunk OpenAI sends when ``stream_options.include_usage`` is set."""
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
        }
