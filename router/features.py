"""Request features: computed once per request, read by every policy.

Scoring and deciding are kept apart: this module only measures the request;
:mod:`router.policies` decide what to do with the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from router.chat import ChatRequest
from router.classify.personal_data import PersonalDataDetector, RegexDetector, Span
from router.tokens import EstimateCounter, TokenCounter

__all__ = ["FeatureExtractor", "Features", "PersonalData"]

log = logging.getLogger("hybrid_router.features")


@dataclass(frozen=True, slots=True)
class PersonalData:
    """What the personal-data detector found.

    ``error`` is set when the detector failed; the request is then treated as
    containing personal data (``found`` is True): failing closed.
    """

    found: bool
    spans: tuple[Span, ...] = ()
    detector: str = ""
    error: str | None = None

    @property
    def kinds(self) -> list[str]:
        return sorted({span.kind for span in self.spans})

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "kinds": self.kinds,
            "spans": [span.to_dict() for span in self.spans],
            "detector": self.detector,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Features:
    """Everything policies may look at about one request."""

    prompt_tokens: int
    token_counter: str
    prompt_chars: int
    message_count: int
    max_tokens: int | None
    wants_tools: bool
    wants_json: bool
    has_images: bool
    stream: bool
    personal_data: PersonalData = field(default_factory=lambda: PersonalData(found=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "token_counter": self.token_counter,
            "prompt_chars": self.prompt_chars,
            "message_count": self.message_count,
            "max_tokens": self.max_tokens,
            "wants_tools": self.wants_tools,
            "wants_json": self.wants_json,
            "has_images": self.has_images,
            "stream": self.stream,
            "personal_data": self.personal_data.to_dict(),
        }


class FeatureExtractor:
    """Computes :class:`Features` with an injected token counter and detector."""

    def __init__(
        self,
        *,
        token_counter: TokenCounter | None = None,
        detector: PersonalDataDetector | None = None,
    ) -> None:
        self.token_counter: TokenCounter = token_counter or EstimateCounter()
        self.detector: PersonalDataDetector = detector or RegexDetector()

    def extract(self, request: ChatRequest) -> Features:
        return Features(
            prompt_tokens=self.token_counter.count(request),
            token_counter=self.token_counter.name,
            prompt_chars=len(request.prompt_text),
            message_count=len(request.messages),
            max_tokens=request.effective_max_tokens,
            wants_tools=bool(request.tools),
            wants_json=request.wants_json,
            has_images=request.has_images,
            stream=request.stream,
            personal_data=self._personal_data(request.prompt_text),
        )

    def _personal_data(self, text: str) -> PersonalData:
        try:
            spans = tuple(self.detector.detect(text))
        except Exception as exc:
            log.warning("personal-data detector failed; treating request as personal", exc_info=exc)
            return PersonalData(found=True, detector=self.detector.name, error=type(exc).__name__)
        return PersonalData(found=bool(spans), spans=spans, detector=self.detector.name)
