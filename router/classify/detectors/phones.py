"""Phone numbers: candidate digit runs, validated by ``phonenumbers`` (Google's libphonenumber metadata).

A number is valid for its own country code ("+44 ...") or for one of the
configured default regions. Validation is the costly part (about 25 us a
region), so the shape filters run first and results are cached by digits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from router.classify.detectors._engine import WORD, clear_after, clear_before, near, pattern
from router.features import Span

__all__ = ["Phones"]

_CANDIDATE = pattern("phone_candidate", r"[+(\d][\d ().\-]{5,21}\d(?:\s?(?:x|ext\.?|extension|#)\s?\d{1,6})?")
# Digit strings that phonenumbers may accept in some region but that read as
# something else: decimals, ISO dates, ISBN-like groups of one digit.
_NOT_A_PHONE = pattern("not_a_phone", r"\d+\.\d+|\d{4}-\d{2}-\d{2}|\d+(?:-\d+)*-\d-\d+(?:-\d+)*|\d+-\d-\d+.*")
_DOTTED_GROUP = pattern("phone_dotted_group", r"\d+")
_CUE = pattern(
    "phone_cue",
    r"(?i)phone|\bcall|\btel\b|tel:|mobile|\bcell|whatsapp|\bsms\b|text me|\bfax|contact|\bring\b|\bdial|reach me|"
    r"handy|telefon|t[ée]l[ée]phone|portable|llam|n[uú]mero|电话|手机|電話|携帯|전화|هاتف|फ़?ोन|नंबर",
)
_CN_MOBILE = pattern("cn_mobile", r"1[3-9]\d{9}")
_BEFORE = WORD | {".", "+", "(", "-", "/", ":"}
_SEPARATORS = frozenset(" ().-")


@dataclass
class Phones:
    """The phone finder for a tuple of default regions (ISO 3166 codes)."""

    regions: tuple[str, ...]

    def __post_init__(self) -> None:
        self._confidence = functools.lru_cache(maxsize=4096)(self._validate)

    def __call__(self, text: str) -> Iterator[Span]:
        for m in _CANDIDATE.finditer(text):
            candidate = m.group()
            if not clear_before(text, m.start(), _BEFORE) or not clear_after(text, m.end(), WORD):
                continue
            digits = _main_digits(candidate)
            if not 7 <= digits <= 15 or _NOT_A_PHONE.fullmatch(candidate) or not _dotted_like_a_phone(candidate):
                continue
            bare = candidate.isdigit()
            if bare and not (near(_CUE, text, m.start()) or _CN_MOBILE.fullmatch(candidate)):
                continue  # a bare digit run is a phone only when the text says so (or it is a CN mobile)
            confidence = self._confidence(candidate)
            if confidence:
                yield Span("phone", m.start(), m.end(), confidence)

    def _validate(self, candidate: str) -> float:
        import phonenumbers

        possible = False
        pn: Any = phonenumbers
        international = candidate.startswith("+")
        for region in (None,) if international else self.regions:
            try:
                number = pn.parse(candidate, region)
            except pn.NumberParseException:
                continue
            if pn.is_valid_number(number):
                return 0.9
            possible = possible or pn.is_possible_number(number)
        # A possible-but-unassigned number still looks like one when written with separators.
        return 0.6 if possible and any(ch in _SEPARATORS for ch in candidate) else 0.0


def _main_digits(candidate: str) -> int:
    """Digits before any extension: E.164 allows at most 15."""
    main = candidate
    for mark in ("x", "e", "#"):
        main = main.split(mark, 1)[0]
    return sum(ch.isdigit() for ch in main)


def _dotted_like_a_phone(candidate: str) -> bool:
    """Dots separate phone groups of two or more digits ("415.555.0199"), not "1.2.3.4000"."""
    if "." not in candidate:
        return True
    return all(len(m.group()) >= 2 for m in _DOTTED_GROUP.finditer(candidate))
