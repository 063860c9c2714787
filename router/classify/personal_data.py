"""Finding personal data in prompt text.

:class:`PersonalDataDetector` is the plug-in point; :class:`RegexDetector` is
the built-in: regular expressions plus checksums where a format has one
(Luhn for payment cards), so that an order number is not taken for a card.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FixedDetector", "PersonalDataDetector", "RegexDetector", "Span", "luhn_valid"]


@dataclass(frozen=True, slots=True)
class Span:
    """One piece of personal data: its kind and where it is in the text."""

    kind: str
    start: int
    end: int
    confidence: float = 1.0

    def to_dict(self) -> dict[str, object]:
        # The matched text is left out on purpose: spans end up in logs and in /v1/route.
        return {"kind": self.kind, "start": self.start, "end": self.end, "confidence": self.confidence}


class PersonalDataDetector(Protocol):
    """Finds personal data in text."""

    name: str

    def detect(self, text: str) -> Sequence[Span]: ...


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
# Not glued to other digit groups, so part of a longer number is not a phone.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![ .-]?\d)"
)
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_SECRET = re.compile(
    r"(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|xox[bpa]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----)"
)


class RegexDetector:
    """Emails, phone numbers, payment cards (Luhn-checked), US SSNs, IPv4 addresses and API keys.

    >>> [s.kind for s in RegexDetector().detect("mail jo@example.com or call +1 415-555-0100")]
    ['email', 'phone']
    """

    name = "regex"

    def detect(self, text: str) -> list[Span]:
        spans: list[Span] = []
        spans += self._matches("email", _EMAIL, text)
        spans += self._matches("secret", _SECRET, text)
        spans += self._matches("ssn", _SSN, text)
        spans += self._matches("ip_address", _IPV4, text)
        spans += (
            Span("payment_card", m.start(), m.end())
            for m in _CARD.finditer(text)
            if luhn_valid(re.sub(r"\D", "", m.group()))
        )
        taken = [(s.start, s.end) for s in spans]
        spans += (
            span
            for span in self._matches("phone", _PHONE, text)
            if not any(start < span.end and span.start < end for start, end in taken)
        )
        return sorted(spans, key=lambda span: span.start)

    @staticmethod
    def _matches(kind: str, pattern: re.Pattern[str], text: str) -> Iterable[Span]:
        return (Span(kind, m.start(), m.end()) for m in pattern.finditer(text))


@dataclass
class FixedDetector:
    """A fake detector: reports the same spans for every text, or raises."""

    spans: Sequence[Span] = ()
    error: Exception | None = None
    name: str = "fixed"

    def detect(self, text: str) -> Sequence[Span]:
        if self.error is not None:
            raise self.error
        return self.spans
