"""Request features: computed once per request, read by every policy.

Scoring and deciding are kept apart: :class:`router.classify.classifier.RequestClassifier`
measures the request into a :class:`Features`; :mod:`router.policies` decide
what to do with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Difficulty", "Features", "PersonalData", "RouteMatch", "Span", "Uninspectable"]


@dataclass(frozen=True, slots=True)
class Span:
    """One piece of personal data: its kind, where it is, and how sure the detector is."""

    kind: str
    start: int
    end: int
    confidence: float = 1.0
    # How it was found when it was not plain text, e.g. "base64" or "url".
    via: str = ""
    # Which outgoing field it is in (``messages[0].content``), offsets then being
    # into that field; empty while the span is over the text a detector was given.
    field: str = ""

    def to_dict(self) -> dict[str, object]:
        # The matched text is left out on purpose: spans end up in logs and in /v1/route.
        out: dict[str, object] = {
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "confidence": self.confidence,
        }
        if self.via:
            out["via"] = self.via
        if self.field:
            out["field"] = self.field
        return out


@dataclass(frozen=True, slots=True)
class Uninspectable:
    """A value that would leave the machine but cannot be read as text (image, audio, file bytes)."""

    field: str
    kind: Literal["image", "audio", "file"]

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The best route and its similarity; ``route`` is None below the threshold."""

    route: str | None
    score: float
    best: str | None

    def to_dict(self) -> dict[str, object]:
        return {"route": self.route, "score": round(self.score, 4), "closest": self.best}


@dataclass(frozen=True, slots=True)
class PersonalData:
    """What the personal-data detector found.

    ``error`` is set when the detector failed or ran out of time; the request
    is then treated as containing personal data (``found`` is True): failing closed.
    ``spans`` are located on the outgoing fields (``Span.field``);
    ``uninspectable`` lists what leaves the machine unread (the ``privacy``
    policy's ``on_uninspectable`` decides on it).
    """

    found: bool
    spans: tuple[Span, ...] = ()
    detector: str = ""
    error: str | None = None
    uninspectable: tuple[Uninspectable, ...] = ()

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
            "uninspectable": [item.to_dict() for item in self.uninspectable],
        }


@dataclass(frozen=True, slots=True)
class Difficulty:
    """P(the edge model's answer would be worse than the cloud's), and where it came from."""

    score: float
    source: str  # "head:<encoder>" for the trained head, "rules" for the fallback

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "source": self.source}


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
    has_code: bool = False
    has_math: bool = False
    language: str | None = None
    semantic: RouteMatch | None = None
    difficulty: Difficulty | None = None
    # Anything the classifier wants the trail to say, e.g. that it fell back to rules.
    notes: tuple[str, ...] = ()
    classifier_ms: float = 0.0

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
            "has_code": self.has_code,
            "has_math": self.has_math,
            "language": self.language,
            "semantic": self.semantic.to_dict() if self.semantic else None,
            "difficulty": self.difficulty.to_dict() if self.difficulty else None,
            "notes": list(self.notes),
            "classifier_ms": round(self.classifier_ms, 3),
        }
