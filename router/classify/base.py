"""The classifier contract: one request in, its :class:`~router.features.Features` out.

The router asks a classifier once per request and hands the result to every
policy. :class:`RequestClassifier <router.classify.classifier.RequestClassifier>`
is the built-in; :class:`FixedClassifier` is the fake beside the contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from router.chat import ChatRequest
from router.features import Features

__all__ = ["Classifier", "FixedClassifier"]


@runtime_checkable
class Classifier(Protocol):
    """Measures a request into :class:`~router.features.Features`.

    ``classify`` must not raise for anything a client can send, and must not
    let personal data through when it fails: a failed or late detector is
    reported as ``Features.personal_data.error`` (the request counts as personal).
    """

    def start(self) -> None:
        """Load models (seconds of blocking work: call it in a thread at start-up)."""

    def close(self) -> None:
        """Release what :meth:`start` acquired. Safe to call twice."""

    async def classify(self, request: ChatRequest) -> Features:
        """The features of ``request``."""
        ...


@dataclass
class FixedClassifier:
    """A fake: answers the same features for every request, or computes them with ``answer``.

    >>> import asyncio
    >>> fake = FixedClassifier(Features(prompt_tokens=3, token_counter="fixed", prompt_chars=12,
    ...     message_count=1, max_tokens=None, wants_tools=False, wants_json=False, has_images=False, stream=False))
    >>> request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    >>> asyncio.run(fake.classify(request)).prompt_tokens
    3
    """

    features: Features | None = None
    answer: Callable[[ChatRequest], Features] | None = None
    seen: list[ChatRequest] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    async def classify(self, request: ChatRequest) -> Features:
        self.seen.append(request)
        if self.answer is not None:
            return self.answer(request)
        if self.features is None:
            raise ValueError("FixedClassifier needs features or answer")
        return self.features
