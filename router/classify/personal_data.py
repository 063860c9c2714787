"""Finding personal data in prompt text.

:class:`PersonalDataDetector` is the plug-in point; :class:`PatternDetector`
is the built-in. It runs on the whole text, however long (nothing is
truncated to a model window), and finds:

=================  =========================================================  ==========
kind               how                                                        confidence
=================  =========================================================  ==========
email              address syntax with a dotted domain                        0.95
phone              candidate digit runs parsed by ``phonenumbers``, valid     0.9 / 0.6
                   for the number's own region or a configured default one
payment_card       13-19 digits, a known issuer prefix and the Luhn check     0.95
iban               country length table and the mod-97 check                  0.97
ssn                US SSN format minus never-issued ranges                    0.85 (0.95 near "SSN")
national_id        UK NINO, China resident ID (mod 11), India Aadhaar         0.8-0.95
                   (Verhoeff), Spain DNI/NIE (mod 23), Canada SIN (Luhn,
                   only near a SIN keyword)
ip_address         IPv4 and IPv6, validated by :mod:`ipaddress`               0.8
secret             provider key formats, PEM private keys, JWTs, and          0.7-0.99
                   ``password=...``-style assignments
person_name        a capitalised name after a cue ("my name is", "Dear",      0.6-0.75
                   "Mr.") or starting with a common first name
street_address     house number, street name and a street-type word, or a     0.6-0.8
                   UK postcode, or a US "State ZIP"
=================  =========================================================  ==========

Full-width digits and @ (common in CJK text) are read as ASCII. Personal
data hidden in a percent-encoded URL component or a base64 blob is found by
decoding, and reported as a span over the encoded text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.classify.checksums import cn_resident_id_valid, es_dni_valid, iban_valid, luhn_valid, verhoeff_valid

__all__ = [
    "FixedDetector",
    "PatternDetector",
    "PersonalDataDetector",
    "RegexDetector",
    "Span",
    "luhn_valid",
]


@dataclass(frozen=True, slots=True)
class Span:
    """One piece of personal data: its kind, where it is, and how sure the detector is."""

    kind: str
    start: int
    end: int
    confidence: float = 1.0
    # How it was found when it was not plain text, e.g. "base64" or "url".
    via: str = ""

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
        return out


class PersonalDataDetector(Protocol):
    """Finds personal data in text. Must not raise on any input text."""

    name: str

    def detect(self, text: str) -> Sequence[Span]: ...


# Full-width ASCII variants (U+FF01-FF5E) map one-to-one onto ASCII, so offsets are kept.
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}

# Anchored on "@" and then extended left: a leading [local-part]+ would be tried at every position.
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z])")
_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
# Patterns start with a character class, not a look-behind or \b, so the regex
# engine can skip ahead to candidate characters (about 30x faster on prose);
# what may not precede a match is checked by _clear_before instead.
_PHONE_CANDIDATE = re.compile(r"[+(\d][\d ().\-]{5,21}\d(?!\d)")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"\d{3}([- ]?)\d{2}\1\d{4}(?![\d-])")
_NINO = re.compile(r"(?![DFIQUV])[A-Z](?![DFIOQUV])[A-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_CN_ID = re.compile(r"\d{17}[\dXx](?![\dA-Za-z])")
_AADHAAR = re.compile(r"[2-9]\d{3} ?\d{4} ?\d{4}(?!\d)")
_ES_DNI = re.compile(r"[XYZ\d]\d{6,7}-?[A-HJ-NP-TV-Z]\b")
_SIN = re.compile(r"\d{3}[ -]?\d{3}[ -]?\d{3}(?!\d)")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.]|\.\d)")
_IPV6 = re.compile(r"[0-9A-Fa-f:][0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![:\w])")
# Digit strings that phonenumbers may accept in some region but that read as
# something else: versions and IPs, decimals, ISO dates, ISBN-like groups of one digit.
_NOT_A_PHONE = re.compile(r"\d{1,3}(?:\.\d+){2,}|\d+\.\d+|\d{4}-\d{2}-\d{2}|\d+(?:-\d+)*-\d-\d+(?:-\d+)*|\d+-\d-\d+.*")
_PHONE_CUE = re.compile(
    r"(?i)(?:phone|call|tel|mobile|cell|whatsapp|sms|text me|fax|contact|ring|dial|number|"
    r"\u7535\u8bdd|\u624b\u673a|\u96fb\u8a71|\u643a\u5e2f|\uc804\ud654)"
)
_CN_MOBILE = re.compile(r"1[3-9]\d{9}")
_VERSION_CUE = re.compile(r"(?:version|v|ver\.?|release)\s*$", re.IGNORECASE)
# (hints that must appear in the lower-cased text, pattern, confidence): the hints skip
# patterns that cannot match at C speed before any regex runs.
_SECRETS: list[tuple[tuple[str, ...], re.Pattern[str], float]] = [
    (("private key",),
     re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|$)"), 0.99),
    (("sk-",), re.compile(r"sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_-]{20,}"), 0.97),
    (("akia", "asia"), re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}\b"), 0.97),
    (("gh", "github_pat_"), re.compile(r"gh[pousr]_[A-Za-z0-9]{36}\b|github_pat_[A-Za-z0-9_]{50,}"), 0.97),
    (("xox",), re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"), 0.95),
    (("aiza",), re.compile(r"AIza[0-9A-Za-z_-]{35}\b"), 0.95),
    (("_live_",), re.compile(r"(?:sk|rk)_live_[0-9A-Za-z]{16,}"), 0.97),
    (("eyj",), re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), 0.9),
    (("pass", "pwd", "secret", "key", "token"),
     re.compile(r"(?i)(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
                r"\s*[:=]\s*[\"']?([^\s\"',;]{8,})"), 0.8),
]  # fmt: skip
_NAME_CUE_HINTS = ("name", "i am", "i'm", "call me", "dear", "sincerely", "regards", "mr", "ms", "miss", "dr", "prof")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_URL_STOP = frozenset(" \t\r\n\"'<>")

_NAME_WORD = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_NAME_CUE = re.compile(
    r"(?:(?:[Mm]y name is|[Nn]ame:|I am|I'm|[Cc]all me|[Dd]ear|[Ss]incerely,?|[Rr]egards,?)\s+"
    r"(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+)?|(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+)"
    rf"({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"
)
_COMMON_FIRST_NAMES = frozenset(
    """
    James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony
    Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason
    Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel
    Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry Tyler Aaron Jose Adam Nathan Henry
    Peter Zachary Douglas Kyle Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen
    Lisa Nancy Betty Sandra Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah
    Stephanie Dorothy Rebecca Sharon Laura Cynthia Amy Kathleen Angela Shirley Brenda Emma Anna Pamela
    Nicole Samantha Katherine Christine Helen Debra Rachel Carolyn Janet Maria Catherine Heather Diane Olivia
    Julie Joyce Victoria Ruth Virginia Lauren Kelly Christina Joan Evelyn Judith Andrea Hannah Megan
    Cheryl Jacqueline Martha Madison Teresa Gloria Sara Janice Ann Kathryn Abigail Sophia Frances Jean
    Alice Judy Isabella Julia Grace Amber Denise Danielle Marilyn Beverly Charlotte Natalie Theresa Diana
    Brittany Doris Kayla Alexis Lori Marie Mohammed Ahmed Wei Li Hiroshi Yuki Priya Rahul
    Carlos Juan Luis Miguel Sofia Lucia Hans Klaus Pierre Jean-Pierre Giulia Marco Luca Olga
    Ivan Dmitri Fatima Aisha Omar Ali Chen Jane
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_CAPITALISED_PAIR = re.compile(rf"({_NAME_WORD})\s+({_NAME_WORD})\b")
_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Close|"
    r"Square|Sq|Parkway|Pkwy|Highway|Hwy|Crescent|Gardens|Row|Mews|Strasse|Straße|Str"
)
_STREET = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?,?\s+(?:[A-Z][a-z]+\.?\s+){{1,3}}(?:{_STREET_TYPES})\b\.?"
    r"(?:,?\s+(?:Apt|Suite|Unit|Flat)\.?\s*\w+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)?(?:,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?)?)?"
)
_STREET_DE = re.compile(r"\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|gasse|platz|allee)\s+\d{1,4}[a-z]?\b")
_UK_POSTCODE = re.compile(r"[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")
_US_STATE_ZIP = re.compile(r"([A-Z]{2})\s+\d{5}(?:-\d{4})?\b")
_US_STATES = frozenset(
    """
    AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT
    NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_CONTEXT = {
    "ssn": re.compile(r"(?i)\b(?:ssn|social security)"),
    "sin": re.compile(r"(?i)\b(?:sin|social insurance)"),
    "aadhaar": re.compile(r"(?i)\baadhaa?r|\buidai"),
}
_CARD_PREFIXES = re.compile(
    r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])|3(?:0[0-5]|[68]))"
)


_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _clear_before(text: str, start: int, forbidden: Iterable[str] | str = _WORD) -> bool:
    """True when the character before ``start`` is not one of ``forbidden`` (a look-behind, done cheaply)."""
    return start == 0 or text[start - 1] not in forbidden


def _glued_after(text: str, end: int) -> bool:
    """True when the match runs on into a word (``12345678abc``), so it is part of a code."""
    return end < len(text) and (text[end].isalpha() and text[end].isascii())


def _near(cue: re.Pattern[str], text: str, start: int, window: int = 40) -> bool:
    return cue.search(text, max(0, start - window), start) is not None


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL_DOMAIN.finditer(text):
        start = m.start()
        while start > 0 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start < m.start():
            yield Span("email", start, m.end(), 0.95)


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        if not _clear_before(text, m.start(), "0123456789-"):
            continue
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _CARD_PREFIXES.match(digits) and luhn_valid(digits):
            yield Span("payment_card", m.start(), m.end(), 0.95)


def _ibans(text: str) -> Iterator[Span]:
    upper = text.upper()
    for m in _IBAN.finditer(upper):
        if _clear_before(upper, m.start()) and iban_valid(m.group()):
            yield Span("iban", m.start(), m.end(), 0.97)


def _national_ids(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        never_issued = digits[:3] in ("000", "666") or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000"
        if never_issued or not _clear_before(text, m.start(), "0123456789-"):
            continue
        near = _near(_CONTEXT["ssn"], text, m.start())
        if m.group(1) or near:  # nine bare digits are an SSN only when the text says so
            yield Span("ssn", m.start(), m.end(), 0.95 if near else 0.85)
    for m in _NINO.finditer(text):
        if _clear_before(text, m.start()):
            yield Span("national_id", m.start(), m.end(), 0.8)
    for m in _CN_ID.finditer(text):
        if _clear_before(text, m.start(), "0123456789") and cn_resident_id_valid(m.group()):
            yield Span("national_id", m.start(), m.end(), 0.95)
    for m in _AADHAAR.finditer(text):
        if _clear_before(text, m.start(), "0123456789") and verhoeff_valid(m.group().replace(" ", "")):
            yield Span("national_id", m.start(), m.end(), 0.9 if _near(_CONTEXT["aadhaar"], text, m.start()) else 0.7)
    for m in _ES_DNI.finditer(text):
        if _clear_before(text, m.start()) and es_dni_valid(m.group().replace("-", "")):
            yield Span("national_id", m.start(), m.end(), 0.85)
    for m in _SIN.finditer(text):
        if (
            _clear_before(text, m.start(), "0123456789")
            and _near(_CONTEXT["sin"], text, m.start())
            and luhn_valid(re.sub(r"\D", "", m.group()))
        ):
            yield Span("national_id", m.start(), m.end(), 0.85)


def _ip_addresses(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if not _clear_before(text, m.start(), "0123456789."):
            continue
        if all(int(part) < 256 for part in m.group().split(".")) and not _VERSION_CUE.search(
            text, max(0, m.start() - 10), m.start()
        ):
            yield Span("ip_address", m.start(), m.end(), 0.8)
    for m in _IPV6.finditer(text):
        if not _clear_before(text, m.start(), _WORD | {":"}):
            continue
        candidate = m.group()
        if candidate.count(":") >= 2 and any(c.isalnum() for c in candidate):
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield Span("ip_address", m.start(), m.end(), 0.8)


def _secrets(text: str) -> Iterator[Span]:
    lowered = text.lower()
    for hints, pattern, confidence in _SECRETS:
        if not any(hint in lowered for hint in hints):
            continue
        for m in pattern.finditer(text):
            if not _clear_before(text, m.start()):
                continue
            start, end = (m.start(1), m.end(1)) if m.lastindex else (m.start(), m.end())
            yield Span("secret", start, end, confidence)


def _names(text: str) -> Iterator[Span]:
    lowered = text.lower()
    if any(hint in lowered for hint in _NAME_CUE_HINTS):
        for m in _NAME_CUE.finditer(text):
            yield Span("person_name", m.start(1), m.end(1), 0.75)
    for m in _CAPITALISED_PAIR.finditer(text):
        if (
            _clear_before(text, m.start())
            and m.group(1) in _COMMON_FIRST_NAMES
            and m.group(2) not in _COMMON_FIRST_NAMES | {"The", "And"}
        ):
            yield Span("person_name", m.start(), m.end(), 0.6)


def _addresses(text: str) -> Iterator[Span]:
    for pattern, confidence in ((_STREET, 0.8), (_STREET_DE, 0.8), (_UK_POSTCODE, 0.6)):
        for m in pattern.finditer(text):
            if _clear_before(text, m.start()):
                yield Span("street_address", m.start(), m.end(), confidence)
    for m in _US_STATE_ZIP.finditer(text):
        if m.group(1) in _US_STATES and _clear_before(text, m.start()):
            yield Span("street_address", m.start(), m.end(), 0.6)


@dataclass
class _Phones:
    regions: tuple[str, ...]

    def __call__(self, text: str) -> Iterator[Span]:
        import phonenumbers

        for m in _PHONE_CANDIDATE.finditer(text):
            candidate = m.group()
            if not _clear_before(text, m.start(), _WORD | {".", "+", "(", "-", "/"}) or _glued_after(text, m.end()):
                continue
            digits = sum(ch.isdigit() for ch in candidate)
            if not 7 <= digits <= 15 or _NOT_A_PHONE.fullmatch(candidate):
                continue
            bare = candidate.isdigit()
            if bare and not (_near(_PHONE_CUE, text, m.start()) or _CN_MOBILE.fullmatch(candidate)):
                continue  # a bare digit run is a phone only when the text says so (or it is a CN mobile)
            confidence = self._confidence(phonenumbers, candidate)
            if confidence:
                yield Span("phone", m.start(), m.end(), confidence)

    def _confidence(self, phonenumbers: object, candidate: str) -> float:
        pn = phonenumbers
        possible = False
        for region in (None, *self.regions) if candidate.startswith("+") else self.regions:
            try:
                number = pn.parse(candidate, region)  # type: ignore[attr-defined]
            except pn.NumberParseException:  # type: ignore[attr-defined]
                continue
            if pn.is_valid_number(number):  # type: ignore[attr-defined]
                return 0.9
            possible = possible or pn.is_possible_number(number)  # type: ignore[attr-defined]
        # A possible-but-unassigned number still looks like one when written with separators.
        return 0.6 if possible and re.search(r"[ ().-]", candidate) else 0.0


# Any decimal digit: every number finder below needs one (a regex scan is ~5x faster than
# a per-character generator).
_ANY_DIGIT = re.compile(r"\d")


@dataclass
class PatternDetector:
    """The built-in detector: patterns, checksums and decoders (see the module docstring).

    >>> [s.kind for s in PatternDetector().detect("mail jo@example.com or call +1 415-555-0100")]
    ['email', 'phone']
    """

    phone_regions: Sequence[str] = ("US", "GB", "DE", "FR", "IN", "CN", "JP", "BR", "ES", "IT", "CA", "AU")
    min_confidence: float = 0.5
    name: str = "patterns"
    _phones: _Phones = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._phones = _Phones(tuple(self.phone_regions))

    def detect(self, text: str) -> list[Span]:
        text = text.translate(_FULLWIDTH)
        spans = list(self._plain(text))
        if "%" in text or len(text) >= 16:
            spans += self._decoded(text)
        return _resolve_overlaps(s for s in spans if s.confidence >= self.min_confidence)

    def _plain(self, text: str) -> Iterator[Span]:
        yield from _secrets(text)
        yield from _names(text)
        if "@" in text:
            yield from _emails(text)
        if _ANY_DIGIT.search(text):
            for finder in (_cards, _ibans, _national_ids, _ip_addresses, self._phones, _addresses):
                yield from finder(text)
        elif ":" in text:
            yield from _ip_addresses(text)

    def _decoded(self, text: str) -> Iterator[Span]:
        end = 0
        for m in _PERCENT.finditer(text):
            if m.start() < end:
                continue
            start, end = _token_bounds(text, m.start())
            decoded = urllib.parse.unquote_plus(text[start:end])
            for inner in self._plain(decoded):
                yield Span(inner.kind, start, end, inner.confidence * 0.95, via="url")
        for m in _BASE64.finditer(text):
            if not _clear_before(text, m.start(), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"):
                continue
            decoded_text = _base64_text(m.group())
            if decoded_text:
                for inner in self._plain(decoded_text):
                    yield Span(inner.kind, m.start(), m.end(), inner.confidence * 0.9, via="base64")


def _token_bounds(text: str, index: int) -> tuple[int, int]:
    """The whitespace-delimited token around ``index``."""
    start = index
    while start > 0 and text[start - 1] not in _URL_STOP:
        start -= 1
    end = index
    while end < len(text) and text[end] not in _URL_STOP:
        end += 1
    return start, end


def _base64_text(blob: str) -> str | None:
    """The blob decoded as mostly printable UTF-8 text, or None."""
    if len(blob) % 4 == 1:
        return None
    padded = blob + "=" * (-len(blob) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
    return decoded if decoded and printable / len(decoded) > 0.95 else None


def _resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Keep the most confident span where spans overlap (longer wins a tie)."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (-s.confidence, -(s.end - s.start), s.start)):
        if all(span.end <= other.start or span.start >= other.end for other in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


# The issue-2 name, kept for configs and callers that used it.
RegexDetector = PatternDetector


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
