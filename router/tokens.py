"""Counting prompt tokens before a target is chosen.

The ``context_window`` policy and the cost estimate need a prompt's size in
tokens before any backend has seen it. :class:`EstimateCounter` is the fast
documented fallback; a backend with a real tokenizer (the ONNX edge model)
supplies an exact :class:`TokenCounter` instead.
"""

from __future__ import annotations

from typing import Protocol

from router.chat import ChatRequest

__all__ = ["EstimateCounter", "TokenCounter"]


class TokenCounter(Protocol):
    """Counts the tokens a request's messages take."""

    @property
    def name(self) -> str:
        """Shown in ``/v1/route`` so a reader knows how exact the count is."""
        ...

    def count(self, request: ChatRequest) -> int: ...


class EstimateCounter:
    """``ceil(chars / 4)`` per message plus 4 tokens of chat framing each.

    Four characters per token is the usual rule of thumb for English with
    byte-pair tokenizers (GPT, Llama, SmolLM); it over-counts code and
    under-counts CJK text, where a character is often a token of its own, so
    CJK characters count one token each.

    >>> from router.chat import ChatRequest
    >>> EstimateCounter().count(ChatRequest.model_validate({"messages": [{"role": "user", "content": "x" * 40}]}))
    14
    """

    name = "estimate:chars/4"
    per_message = 4

    def count(self, request: ChatRequest) -> int:
        total = 0
        for message in request.messages:
            text = message.text()
            # CJK characters take 3 UTF-8 bytes; counting bytes is a C-speed way to find them.
            wide = (len(text.encode("utf-8")) - len(text)) // 2
            total += -(-(len(text) - wide) // 4) + wide + self.per_message
        return total
