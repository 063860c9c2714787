"""Finding personal data in prompt text.

:class:`PersonalDataDetector` is the plug-in point; :class:`PatternDetector`
is the built-in and :class:`FixedDetector` the fake. The built-in runs on the
whole text, however long, in time linear in its length (every pattern is an
RE2 pattern, see :mod:`router.classify.detectors`), and finds:

=================  =========================================================  ==========
kind               how                                                        confidence
=================  =========================================================  ==========
email              address syntax with a dotted domain (IDN too), and the     0.85-0.95
                   "jo [at] example [dot] com" obfuscation
phone              candidate digit runs parsed by ``phonenumbers``, valid     0.6-0.9
                   for the number's own region or a configured default one
payment_card       13-19 digits in groups of 3-6 joined by spaces, dots or    0.9-0.95
                   dashes, a known issuer prefix and the Luhn check
iban               country length table and the mod-97 check                  0.97
ssn                US SSN format minus never-issued ranges                    0.85 (0.97 near "SSN")
national_id        UK NINO, China resident ID (mod 11), India Aadhaar         0.7-0.96
                   (Verhoeff), Spain DNI/NIE (mod 23), Canada SIN (Luhn,
                   only near a SIN keyword)
ip_address         IPv4 and IPv6, validated by :mod:`ipaddress`; loopback,    0.8
                   "any", multicast and broadcast are not personal
secret             provider key formats (OpenAI, Anthropic, AWS, GitHub,      0.8-0.99
                   GitLab, Slack, Google, Stripe, Hugging Face, npm,
                   SendGrid, Telegram, Azure), PEM private keys, JWTs,
                   Bearer tokens, URL passwords and ``password: ...``
person_name        capitalised words scored by a Faker name gazetteer and     0.5-0.9
                   by the words around them (see ``detectors.names``)
street_address     number, street and type in English, Romance, Germanic      0.6-0.8
                   and Polish orders, then city and postcode; PO boxes; UK
                   postcodes and US "State ZIP" alone
=================  =========================================================  ==========

Digits of any script (Arabic-Indic, Devanagari, full-width...) and
full-width ASCII are read as ASCII, one character for one, so spans are
offsets into the text as given. Personal data hidden in a percent-encoded
URL component or a base64 blob is found by decoding, and reported as a span
over the encoded text. Where spans overlap, those of one kind are merged and
the most confident kind keeps the rest, so a span always covers the whole value.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from router.classify.checksums import luhn_valid
from router.classify.detectors import addresses, encoded, identifiers, names, secrets
from router.classify.detectors._engine import normalise, pattern
from router.classify.detectors.gazetteer import gazetteer
from router.classify.detectors.phones import Phones
from router.features import Span

__all__ = [
    "FixedDetector",
    "PatternDetector",
    "PersonalDataDetector",
    "RegexDetector",
    "Span",
    "luhn_valid",
]


class PersonalDataDetector(Protocol):
    """Finds personal data in text. Must not raise on any input text.

    Spans are offsets into the text passed to ``detect`` and cover exactly the
    value: redaction replaces exactly the span.
    """

    name: str

    def load(self) -> None:
        """Load word lists and compile patterns now (start-up), so the first request does not pay for it."""

    def detect(self, text: str) -> Sequence[Span]: ...


# Every number finder needs one: a C-speed scan spares them on prose.
_ANY_DIGIT = pattern("any_digit", r"\d")


@dataclass
class PatternDetector:
    """The built-in detector: patterns, checksums, gazetteers and decoders (see the module docstring).

    Construction is cheap. The name gazetteer and the address patterns are
    read once per process, on first use or by :meth:`load` at start-up
    (about 0.35 s and 40 MB of RSS); later detectors share them.

    >>> [s.kind for s in PatternDetector().detect("mail jo@example.com or call +1 415-555-0100")]
    ['email', 'phone']
    """

    phone_regions: Sequence[str] = ("US", "GB", "DE", "FR", "IN", "CN", "JP", "BR", "ES", "IT", "CA", "AU")
    min_confidence: float = 0.5
    name: str = "patterns"
    _phones: Phones = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._phones = Phones(tuple(self.phone_regions))

    def load(self) -> None:
        """Read the gazetteer and compile the address patterns now rather than on the first request."""
        gazetteer()
        addresses.compile_patterns()
        normalise("\u0660")

    def detect(self, text: str) -> list[Span]:
        text = normalise(text)
        spans = list(self._plain(text))
        if "%" in text or "+" in text or len(text) >= 16:
            spans += encoded.decoded(text, self._plain)
        return _resolve_overlaps(s for s in spans if s.confidence >= self.min_confidence)

    def _plain(self, text: str) -> Iterator[Span]:
        yield from secrets.secrets(text)
        yield from identifiers.emails(text)
        yield from names.names(text)
        if _ANY_DIGIT.search(text):
            for finder in (
                identifiers.cards,
                identifiers.ibans,
                identifiers.national_ids,
                identifiers.ip_addresses,
                self._phones,
                addresses.addresses,
            ):
                yield from finder(text)
        elif ":" in text:
            yield from identifiers.ip_addresses(text)


def _merge_kind(spans: list[Span]) -> Iterator[Span]:
    """Overlapping spans of one kind become one, so a value is never half covered."""
    current: Span | None = None
    for span in sorted(spans, key=lambda s: (s.kind, s.start)):
        if current is not None and span.kind == current.kind and span.start < current.end:
            best = span if span.confidence > current.confidence else current
            current = replace(best, start=current.start, end=max(current.end, span.end))
        else:
            if current is not None:
                yield current
            current = span
    if current is not None:
        yield current


def _inside_a_place(spans: list[Span]) -> Iterator[Span]:
    """Drop names and phones inside an address or an e-mail.

    "8128 S. Dr Martin Luther King Jr Drive" is a street and "AL 35630-6396" a ZIP+4 code: the
    outer span covers them, and its kind is the right one.
    """
    containers = sorted((s for s in spans if s.kind in ("street_address", "email")), key=lambda s: s.start)
    starts = [s.start for s in containers]
    reach = list(itertools.accumulate((s.end for s in containers), max))  # the furthest end so far
    for span in spans:
        index = bisect.bisect_right(starts, span.start) - 1
        if span.kind in ("person_name", "phone") and index >= 0 and reach[index] >= span.end:
            continue
        yield span


def _remainder(span: Span, kept: list[Span], starts: list[int]) -> Iterator[Span]:
    """The parts of ``span`` that no kept span covers (kept spans are sorted and disjoint)."""
    index = max(bisect.bisect_right(starts, span.start) - 1, 0)
    cursor = span.start
    while index < len(kept) and kept[index].start < span.end:
        other = kept[index]
        if other.end > cursor:
            if other.start > cursor:
                yield replace(span, start=cursor, end=other.start)
            cursor = other.end
        index += 1
    if cursor < span.end:
        yield replace(span, start=cursor, end=span.end)


def _resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Where spans of different kinds overlap, the most confident keeps the overlap (longer wins a tie).

    The other keeps what is left of it, so no character found is left uncovered: a phone that ends
    inside an address does not free the rest of the address. Kept spans never overlap, so a bisect
    finds the neighbours to test: O(n log n) for spans of a few kinds.
    """
    starts: list[int] = []
    kept: list[Span] = []
    merged = list(_inside_a_place(list(_merge_kind(list(spans)))))
    for span in sorted(merged, key=lambda s: (-s.confidence, -(s.end - s.start), s.start)):
        for piece in _remainder(span, kept, starts):
            if piece.end - piece.start < span.end - span.start and not _worth_a_span(piece):
                continue  # a stray separator or letter left between two other spans
            index = bisect.bisect_right(starts, piece.start)
            starts.insert(index, piece.start)
            kept.insert(index, piece)
    return kept


def _worth_a_span(piece: Span) -> bool:
    return piece.end - piece.start >= 3


# The issue-2 name, kept for configs and callers that used it.
RegexDetector = PatternDetector


@dataclass
class FixedDetector:
    """A fake detector: reports the same spans for every text, or raises."""

    spans: Sequence[Span] = ()
    error: Exception | None = None
    name: str = "fixed"

    def load(self) -> None:
        pass

    def detect(self, text: str) -> Sequence[Span]:
        if self.error is not None:
            raise self.error
        return self.spans
