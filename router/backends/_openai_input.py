"""Reading the OpenAI side of a request, once, for every adapter that translates it.

Providers differ in how they write a conversation, but they all need the same
things read out of an OpenAI request: the system prompt apart from the turns,
turns of one role merged, each message's text and image parts, its tool calls
with their arguments as objects, the function tools and the tool choice.
Everything here is pure and raises :class:`~router.errors.InvalidRequest`
naming the offending field (``messages.2.tool_calls``), never the target: the
backend adds the target's name.

>>> from router.chat import ChatRequest
>>> request = ChatRequest.model_validate({"messages": [
...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
>>> system_texts(request.messages), [message.role for _, message in conversation(request.messages)]
(['Be brief.'], ['user'])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from router.chat import Message
from router.errors import InvalidRequest

__all__ = [
    "DataUrl",
    "FunctionTool",
    "Image",
    "Text",
    "ToolCall",
    "ToolChoice",
    "conversation",
    "data_url",
    "function_tools",
    "json_schema",
    "merge_turns",
    "parts",
    "system_texts",
    "tool_arguments",
    "tool_calls",
    "tool_choice",
    "tool_result",
]

B = TypeVar("B")

_SYSTEM_ROLES = ("system", "developer")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.+)", re.DOTALL)


def system_texts(messages: Iterable[Message]) -> list[str]:
    """The non-empty texts of ``system`` and ``developer`` messages, in order."""
    return [text for message in messages if message.role in _SYSTEM_ROLES and (text := message.text())]


def conversation(messages: Iterable[Message]) -> Iterator[tuple[int, Message]]:
    """The user, assistant and tool messages with their index; legacy ``function`` messages are refused."""
    for index, message in enumerate(messages):
        if message.role in _SYSTEM_ROLES:
            continue
        if message.role == "function":
            raise InvalidRequest(
                f"role {message.role!r} is not supported; send tool results as role 'tool'",
                param=f"messages.{index}.role",
            )
        yield index, message


def merge_turns(
    turns: Iterable[tuple[str, str | list[B]]], text_block: Callable[[str], B] | None = None
) -> list[tuple[str, str | list[B]]]:
    """Adjacent turns of one role as one turn, empty turns left out.

    Providers want roles to alternate, and want the results of one turn's tool
    calls together in the next turn. A turn's content may be a plain string
    (kept as it is when alone); ``text_block`` makes a block of it for merging.
    """
    merged: list[tuple[str, str | list[B]]] = []
    for role, content in turns:
        if not content:
            continue
        if merged and merged[-1][0] == role:
            merged[-1] = (role, _blocks(merged[-1][1], text_block) + _blocks(content, text_block))
        else:
            merged.append((role, content))
    return merged


def _blocks(content: str | list[B], text_block: Callable[[str], B] | None) -> list[B]:
    if isinstance(content, list):
        return content
    if text_block is None:
        raise TypeError("merging plain-text turns needs a text_block")
    return [text_block(content)]


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    url: str


def parts(message: Message, index: int) -> list[Text | Image]:
    """A message's content as text and image parts; a string is one text part."""
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)]
    out: list[Text | Image] = []
    for part in content:
        kind = part["type"]
        if kind in ("text", "input_text"):
            out.append(Text(str(part.get("text", ""))))
        elif kind == "image_url":
            image = part.get("image_url")
            out.append(Image(str((image.get("url") if isinstance(image, dict) else image) or "")))
        else:
            raise InvalidRequest(f"content parts of type {kind!r} are not supported", param=f"messages.{index}.content")
    return out


@dataclass(frozen=True, slots=True)
class DataUrl:
    mime: str
    data: str
    """Base64, as it was in the URL."""


def data_url(url: str) -> DataUrl | None:
    """The media type and base64 payload of a ``data:`` URL; None for anything else.

    >>> data_url("data:image/png;base64,iVBO")
    DataUrl(mime='image/png', data='iVBO')
    """
    match = _DATA_URL.fullmatch(url)
    return DataUrl(match["mime"], match["data"]) if match else None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    raw: dict[str, Any]
    """The OpenAI tool call as sent, for provider extras (Gemini's thought signature)."""


def tool_calls(message: Message, index: int) -> list[ToolCall]:
    """An assistant message's tool calls, arguments parsed."""
    param = f"messages.{index}.tool_calls"
    calls = []
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        if not call.get("id") or not function.get("name"):
            raise InvalidRequest("a tool call needs an id and a function name", param=param)
        arguments = tool_arguments(function.get("arguments"), param=param)
        calls.append(ToolCall(str(call["id"]), str(function["name"]), arguments, call))
    return calls


def tool_arguments(raw: object, *, param: str) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON string as the object providers want; empty is ``{}``."""
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return value


def tool_result(message: Message, index: int) -> str:
    """The id of the call a ``tool`` message answers."""
    if not message.tool_call_id:
        raise InvalidRequest("a tool message needs its tool_call_id", param=f"messages.{index}.tool_call_id")
    return message.tool_call_id


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


def function_tools(tools: Iterable[dict[str, Any]]) -> list[FunctionTool]:
    """The request's tools; only named function tools exist on every provider."""
    out = []
    for index, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            raise InvalidRequest("only function tools with a name are supported", param=f"tools.{index}")
        parameters = function.get("parameters")
        strict = function.get("strict")
        out.append(
            FunctionTool(
                name=str(function["name"]),
                description=str(function["description"]) if function.get("description") else None,
                parameters=parameters if isinstance(parameters, dict) and parameters else None,
                strict=bool(strict) if strict is not None else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None
    """The function the model must call, for mode ``function``."""


def tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice | None:
    """``tool_choice`` read; None when the request left it out."""
    if choice is None:
        return None
    if choice == "auto":
        return ToolChoice("auto")
    if choice == "none":
        return ToolChoice("none")
    if choice == "required":
        return ToolChoice("required")
    if isinstance(choice, dict) and isinstance(name := (choice.get("function") or {}).get("name"), str):
        return ToolChoice("function", name)
    raise InvalidRequest("tool_choice must be none, auto, required or a function", param="tool_choice")


def json_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema of a ``json_schema`` response format; None for any other."""
    if (response_format or {}).get("type") != "json_schema":
        return None
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None
