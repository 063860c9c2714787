"""Identifiers with a fixed syntax: e-mail, payment card, IBAN, national ids, IP addresses.

Formats come with their check digits (Luhn, mod 97, mod 11, mod 23,
Verhoeff) wherever one exists: a format match alone would flag every long
number. Every finder reads normalised text (ASCII digits, see
:func:`~router.classify.detectors._engine.normalise`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from router.classify.checksums import (
    IBAN_LENGTHS,
    cn_resident_id_valid,
    es_dni_valid,
    iban_valid,
    luhn_valid,
    verhoeff_valid,
)
from router.classify.detectors._engine import WORD, Match, clear_after, clear_before, near, pattern
from router.features import Span

__all__ = ["cards", "emails", "ibans", "ip_addresses", "national_ids"]

_DIGITS = frozenset("0123456789")

# --- e-mail ------------------------------------------------------------------

# Anchored on "@" and extended left in Python: RFC 5321 caps the local part at 64.
_EMAIL_DOMAIN = pattern("email_domain", r"@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}\p{L}+")
_TLD_MAX = 24
_LOCAL_MAX = 64
_LOCAL_PUNCT = frozenset("._%+-'")
# "jo [at] example [dot] com": the usual hand-obfuscation, brackets required (plain
# "at" and "dot" are words).
_EMAIL_OBFUSCATED = pattern(
    "email_obfuscated",
    r"(?i)[a-z0-9._%+-]+\s*[\[(]\s*at\s*[\])]\s*[a-z0-9-]+(?:\s*(?:[\[(]\s*dot\s*[\])]|\.)\s*[a-z0-9-]+)+",
)


def _local_char(char: str) -> bool:
    # Latin letters only: in "我的邮箱是zhang.wei@example.cn" the address starts at "z".
    return (char.isalnum() and ord(char) < 0x250) or char in _LOCAL_PUNCT


def emails(text: str) -> Iterator[Span]:
    if "@" in text:
        for m in _EMAIL_DOMAIN.finditer(text):
            if not clear_after(text, m.end(), WORD) or len(m.group().rsplit(".", 1)[1]) > _TLD_MAX:
                continue
            start, floor = m.start(), max(0, m.start() - _LOCAL_MAX)
            while start > floor and _local_char(text[start - 1]):
                start -= 1
            while start < m.start() and text[start] in _LOCAL_PUNCT:
                start += 1  # a local part does not start with punctuation ("'jo@x.org'")
            if start < m.start():
                yield Span("email", start, m.end(), 0.95)
    lowered = text.lower()
    if "at]" in lowered or "at)" in lowered:
        for m in _EMAIL_OBFUSCATED.finditer(text):
            if clear_before(text, m.start()):
                yield Span("email", m.start(), m.end(), 0.85)


# --- payment cards -------------------------------------------------------------

# Digit groups joined by one separator; windows of groups are tried in Python so a
# card followed by more digits ("4111 1111 1111 1111 2028") is still found.
_DIGIT_RUN = pattern("digit_groups", r"\d+(?:[ .\-]\d+)*")
_CARD_PREFIXES = pattern(
    "card_prefix",
    r"(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])|3(?:0[0-5]|[68]))",
)


_DIGIT_GROUP = pattern("digit_group", r"\d+")


def _groups(run: str, offset: int) -> list[tuple[int, int]]:
    return [(offset + m.start(), offset + m.end()) for m in _DIGIT_GROUP.finditer(run)]


def _card_at(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _CARD_PREFIXES.match(digits) is not None and luhn_valid(digits)


def cards(text: str) -> Iterator[Span]:
    for m in _DIGIT_RUN.finditer(text):
        if m.end() - m.start() < 13:
            continue
        groups = _groups(m.group(), m.start())
        # A run glued to a word ("file-1 4111 1111 ...") may still hold a card from its second group on.
        first = 0 if clear_before(text, m.start(), WORD | {"-", "."}) else 1
        while first < len(groups):
            span, first = _card_from(text, groups, first)
            if span is not None:
                yield span


def _card_from(text: str, groups: list[tuple[int, int]], first: int) -> tuple[Span | None, int]:
    """The card that starts at group ``first``, if any, and the group to try next."""
    digits = ""
    for last in range(first, len(groups)):
        lo, hi = groups[last]
        # Cards are printed unbroken or in groups of 3 to 6 digits.
        if not 3 <= hi - lo <= 6 and not (first == last and 13 <= hi - lo <= 19):
            break
        digits += text[lo:hi]
        if len(digits) > 19:
            break
        if _card_at(digits) and clear_after(text, hi, WORD):
            return Span("payment_card", groups[first][0], hi, 0.95 if len(digits) != 18 else 0.9), last + 1
    return None, first + 1


# --- IBAN ----------------------------------------------------------------------

# Country code, check digits, then up to 30 letters and digits, in groups of any size joined by
# single spaces or dashes ("ES15-0049-1806-...", "ES10 0075 0080 11 0600658108"). The match may run
# on into the next word: it is cut at the country's length, then checked.
_IBAN = pattern("iban", r"(?i)\b[a-z]{2}[ \-]?\d{2}(?:[ \-]?[a-z0-9]){11,30}")


def _iban_at(text: str, m: Match) -> Span | None:
    value = m.group()
    length = IBAN_LENGTHS.get(value[:2].upper())
    if length is None or not clear_before(text, m.start()):
        return None
    count = 0
    for index, char in enumerate(value):
        if char not in " -":
            count += 1
            if count == length:
                end = m.start() + index + 1
                valid = clear_after(text, end) and iban_valid(text[m.start() : end].replace("-", ""))
                return Span("iban", m.start(), end, 0.97) if valid else None
    return None


def ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        span = _iban_at(text, m)
        if span is None:
            continue
        yield span
        if span.end < m.end():
            # The match ran on past this IBAN and may have swallowed the start of the next one.
            lo = span.end
            window = text[lo : m.end() + 80]  # an IBAN is at most 34 characters and its separators
            for inner in _IBAN.finditer(window):
                shifted = _iban_at(window, inner) if lo + inner.start() < m.end() else None
                if shifted is not None:
                    yield Span("iban", lo + shifted.start, lo + shifted.end, 0.97)


# --- national ids --------------------------------------------------------------

_SSN = pattern("ssn", r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|\d{9}")
_NINO = pattern("uk_nino", r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_NINO_NOT_ISSUED = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_CN_ID = pattern("cn_resident_id", r"\d{17}[\dXx]")
_AADHAAR = pattern("aadhaar", r"[2-9]\d{3} ?\d{4} ?\d{4}")
_ES_DNI = pattern("es_dni", r"(?i)[XYZ\d]\d{6,7}-?[A-HJ-NP-TV-Z]\b")
_SIN = pattern("ca_sin", r"\d{3}[ -]?\d{3}[ -]?\d{3}")
_SSN_CUE = pattern("ssn_cue", r"(?i)\bssn|social security|\bss#")
_SIN_CUE = pattern("sin_cue", r"(?i)\bsin\b|social insurance|\bnas\b")
_AADHAAR_CUE = pattern("aadhaar_cue", r"(?i)aadhaa?r|\buidai|आधार")
_NINO_CUE = pattern("nino_cue", r"(?i)\bnino\b|national insurance|\bni\b")
_NUMBER_BOUND = WORD | {"-", "."}  # what may not touch a bare id number: "...-426614174000" is a UUID


def _compact(value: str) -> str:
    return "".join(ch for ch in value if ch in _DIGITS)


def _ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        if not clear_before(text, m.start(), _NUMBER_BOUND) or not clear_after(text, m.end(), WORD | {"-"}):
            continue
        digits = _compact(m.group())
        if digits[:3] in ("000", "666") or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000":
            continue  # never issued
        cue = near(_SSN_CUE, text, m.start(), 48)
        if cue or len(m.group()) == 11:  # nine bare digits are an SSN only when the text says so
            yield Span("ssn", m.start(), m.end(), 0.97 if cue else 0.85)


def _ninos(text: str) -> Iterator[Span]:
    for m in _NINO.finditer(text):
        if clear_before(text, m.start()) and m.group()[:2].upper() not in _NINO_NOT_ISSUED:
            yield Span("national_id", m.start(), m.end(), 0.9 if near(_NINO_CUE, text, m.start()) else 0.8)


def _cn_ids(text: str) -> Iterator[Span]:
    for m in _CN_ID.finditer(text):
        value = m.group()
        birth = value[6:14]
        plausible = birth[:2] in ("18", "19", "20") and "01" <= birth[4:6] <= "12" and "01" <= birth[6:8] <= "31"
        if (
            plausible
            and clear_before(text, m.start(), _NUMBER_BOUND)
            and clear_after(text, m.end(), WORD)
            and cn_resident_id_valid(value)
        ):
            yield Span("national_id", m.start(), m.end(), 0.96)


def _aadhaars(text: str) -> Iterator[Span]:
    for m in _AADHAAR.finditer(text):
        if (
            clear_before(text, m.start(), _NUMBER_BOUND)
            and clear_after(text, m.end(), _NUMBER_BOUND - {"."})
            and verhoeff_valid(m.group().replace(" ", ""))
        ):
            yield Span("national_id", m.start(), m.end(), 0.96 if near(_AADHAAR_CUE, text, m.start()) else 0.7)


def _es_dnis(text: str) -> Iterator[Span]:
    for m in _ES_DNI.finditer(text):
        if clear_before(text, m.start()) and es_dni_valid(m.group().replace("-", "")):
            yield Span("national_id", m.start(), m.end(), 0.85)


def _sins(text: str) -> Iterator[Span]:
    for m in _SIN.finditer(text):
        if (
            clear_before(text, m.start(), _NUMBER_BOUND)
            and clear_after(text, m.end(), _NUMBER_BOUND - {"."})
            and near(_SIN_CUE, text, m.start())
            and luhn_valid(_compact(m.group()))
        ):
            yield Span("national_id", m.start(), m.end(), 0.96)


def national_ids(text: str) -> Iterator[Span]:
    yield from _ssns(text)
    yield from _ninos(text)
    yield from _cn_ids(text)
    yield from _aadhaars(text)
    yield from _es_dnis(text)
    yield from _sins(text)


# --- IP addresses --------------------------------------------------------------

_IPV4 = pattern("ipv4", r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6 = pattern("ipv6", r"[0-9A-Fa-f:][0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7}")
_VERSION_CUE = pattern("version_cue", r"(?i)(?:version|\bv|\bver\.?|release)\s*$")
_IPV6_BOUND = WORD | {":"}


# Addresses that name no one's machine outside a private network: RFC 1918, carrier NAT,
# IPv4 link-local and IPv6 unique-local. (Documentation ranges stay: they stand in for real ones.)
_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7")
)


def _personal_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_loopback or address.is_unspecified or address.is_multicast or str(address).endswith(".255"):
        return False
    return not any(address.version == net.version and address in net for net in _LOCAL_NETWORKS)


def ip_addresses(text: str) -> Iterator[Span]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if not clear_before(text, m.start(), _DIGITS | {"."}) or not clear_after(text, m.end(), _DIGITS):
                continue
            if text.startswith(".", m.end()) and m.end() + 1 < len(text) and text[m.end() + 1] in _DIGITS:
                continue  # five or more parts: a version or an OID
            try:
                address = ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            if _personal_ip(address) and not near(_VERSION_CUE, text, m.start(), 10):
                yield Span("ip_address", m.start(), m.end(), 0.8)
    if "::" in text or text.count(":") >= 3:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            if (
                not clear_before(text, m.start(), _IPV6_BOUND)
                or not clear_after(text, m.end(), _IPV6_BOUND)
                or candidate.count(":") < 2
            ):
                continue
            try:
                address6 = ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            if _personal_ip(address6):
                yield Span("ip_address", m.start(), m.end(), 0.8)
