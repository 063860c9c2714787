"""The rules every adapter's answers follow, kept in one place.

* **Role chunk.** A stream opens with one ``{"role": "assistant", "content": ""}``
  chunk, sent just before the first output (or the finish). Until then nothing
  has gone out, so a failure before any output still reaches the caller as an
  HTTP error status rather than as a stream that breaks.
* **Filter stops.** A content-filter stop before any output raises
  :class:`~router.errors.ContentFiltered`: there is no answer to give. After
  some output the answer ends with ``finish_reason: "content_filter"``, as
  OpenAI's own answers do.
* **Usage.** A stream ends with exactly one usage chunk (``choices == []``,
  ``usage`` set) whatever the caller asked for; when the upstream reported no
  usage it is estimated: four characters a prompt token, one token an output
  chunk (or four characters of a non-streamed answer).

Translators build every chunk through a :class:`StreamOutput`, and
non-streamed answers go through :func:`answer`, so no adapter can drift
from these rules; the backend contract suite checks each one.

>>> out = StreamOutput("m", prompt_text="hello there")
>>> [c["choices"][0]["delta"] for c in out.delta({"content": "Hi"})]
[{'role': 'assistant', 'content': ''}, {'content': 'Hi'}]
>>> out.close()[0]["usage"]
{'prompt_tokens': 2, 'completion_tokens': 1, 'total_tokens': 3}
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from router.chat import ChatChunk, ChatResult, ChunkMaker, FinishReason, Usage, make_completion, new_completion_id
from router.errors import ContentFiltered

__all__ = ["StreamOutput", "answer", "checked_finish", "estimate_tokens", "tool_call"]

# Delta fields that carry output; a delta with none of them (role only, empty content) is not output.
_OUTPUT_FIELDS = ("content", "tool_calls", "function_call", "refusal", "audio")


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one."""
    return max(1, len(text) // 4)


def checked_finish(finish: FinishReason, *, produced: bool, why: str) -> FinishReason:
    """``finish``, unless it is a filter stop with nothing to show for it, which raises."""
    if finish == "content_filter" and not produced:
        raise ContentFiltered(f"the upstream's content filter withheld the answer ({why})")
    return finish


def tool_call(call_id: str, name: str, arguments: object) -> dict[str, Any]:
    """An OpenAI tool call; ``arguments``, a provider's object, becomes the JSON text OpenAI sends."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def answer(
    *,
    model: str,
    text: str,
    tool_calls: list[dict[str, Any]],
    finish: FinishReason,
    why: str,
    usage: Usage | None,
    prompt_text: str,
    completion_id: str | None = None,
) -> ChatResult:
    """A non-streamed ``chat.completion`` under the output rules."""
    finish = checked_finish(finish, produced=bool(text or tool_calls), why=why)
    usage = usage or Usage(estimate_tokens(prompt_text), estimate_tokens(text) if text else 0)
    body = make_completion(
        model=model,
        content=text if text or not tool_calls else None,
        finish_reason=finish,
        usage=usage,
        tool_calls=tool_calls or None,
        completion_id=completion_id,
    )
    return ChatResult(body, usage)


def _has_output(delta: object) -> bool:
    if isinstance(delta, dict):
        for name in _OUTPUT_FIELDS:
            if delta.get(name):
                return True
    return False


class StreamOutput:
    """Builds one stream's OpenAI chunks under the output rules; a translator writes through one."""

    def __init__(self, model: str, *, prompt_text: str) -> None:
        self._model = model
        self._prompt_text = prompt_text
        self._maker: ChunkMaker | None = None
        # An upstream's own role chunk (OpenAI-shaped upstreams), held until there is output.
        self._role: ChatChunk | None = None
        self._announced = False
        self._pieces = 0
        self._usage: Usage | None = None
        self.produced = False
        """Whether any output has been built (text, tool calls)."""
        self.finished = False
        """Whether the finish chunk has been built."""

    def begin(self, completion_id: str | None = None, model: str | None = None, created: int | None = None) -> None:
        """Take the upstream's id and model for this stream's chunks; only the first call counts."""
        if self._maker is None:
            created = int(time.time()) if created is None else created
            self._maker = ChunkMaker(completion_id or new_completion_id(), model or self._model, created)

    @property
    def _chunks(self) -> ChunkMaker:
        if self._maker is None:
            self._maker = ChunkMaker(new_completion_id(), self._model, int(time.time()))
        return self._maker

    def delta(self, delta: dict[str, Any]) -> list[ChatChunk]:
        """The chunks for one piece of output (text, or a tool call's part)."""
        self.produced = True
        self._pieces += 1
        return self._announce(self._chunks.delta(delta))

    def finish(self, reason: FinishReason, *, why: str) -> list[ChatChunk]:
        """The finish chunk; ``why`` is what the upstream said, for a filter stop's error."""
        checked_finish(reason, produced=self.produced, why=why)
        self.finished = True
        return self._announce(self._chunks.delta({}, reason))

    def relay(self, chunk: ChatChunk, *, why: str) -> list[ChatChunk]:
        """An upstream chunk already in OpenAI's shape, passed on as it came under the same rules."""
        if self._maker is None:
            self.begin(str(chunk.get("id") or ""), str(chunk.get("model") or ""), _int(chunk.get("created")))
        choice = chunk["choices"][0]
        if _has_output(choice.get("delta")):
            self.produced = True
            self._pieces += 1
        elif choice.get("finish_reason") is None:
            if self._announced:
                return [chunk]
            if self._role is None and "role" in (choice.get("delta") or {}):
                self._role = chunk
            return []
        if (finish := choice.get("finish_reason")) is not None:
            checked_finish(finish, produced=self.produced, why=why)
            self.finished = True
        return self._announce(chunk)

    def usage(self, usage: Usage | None) -> None:
        """Note the upstream's token counts; the last ones reported win."""
        if usage is not None:
            self._usage = usage

    def close(self) -> list[ChatChunk]:
        """The closing usage chunk."""
        usage = self._usage or Usage(estimate_tokens(self._prompt_text), self._pieces)
        return [self._chunks.usage(usage)]

    def _announce(self, chunk: ChatChunk) -> list[ChatChunk]:
        if self._announced:
            return [chunk]
        self._announced = True
        if "role" in (chunk["choices"][0].get("delta") or {}):
            return [chunk]
        return [self._role or self._chunks.delta({"role": "assistant", "content": ""}), chunk]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None
