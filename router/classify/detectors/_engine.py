"""The regex engine and text helpers every finder shares.

Every pattern is compiled by RE2 (``google-re2``), whose matching time is
linear in the text whatever the pattern: no input can make a scan backtrack,
and RE2 releases the GIL while it matches. RE2 has no look-arounds or
back-references, so what a pattern may not be next to is checked in Python
with :func:`clear_before` / :func:`clear_after`, on the match only.

The str API of the RE2 binding encodes the whole text on every call and
counts characters from 0 to ``pos``, so ``search(text, pos)`` over a long
text costs O(len(text)) each time. The :class:`Pattern` protocol therefore
leaves ``pos`` out: windows are sliced first (:func:`near`).

:data:`PATTERNS` names every compiled pattern, so the linear-time test can
build adversarial input for each one.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Protocol, cast

__all__ = [
    "PATTERNS",
    "WORD",
    "Match",
    "Pattern",
    "clear_after",
    "clear_before",
    "near",
    "normalise",
    "pattern",
]


class Match(Protocol):
    def start(self, group: int = 0) -> int: ...

    def end(self, group: int = 0) -> int: ...

    def group(self, group: int = 0) -> str: ...

    @property
    def lastindex(self) -> int | None: ...


class Pattern(Protocol):
    def finditer(self, text: str) -> Iterator[Match]: ...

    def search(self, text: str) -> Match | None: ...

    def match(self, text: str) -> Match | None: ...

    def fullmatch(self, text: str) -> Match | None: ...


PATTERNS: dict[str, Pattern] = {}


# RE2 gives each pattern a memory budget for its DFA and falls back to a slower
# (still linear) engine, logging to stderr, when it runs out. Unicode classes
# (\p{L}) and the street-type alternations need more than the 8 MB default;
# the DFA grows lazily, so a larger cap costs nothing until a text needs it.
_MAX_MEM = 64 << 20


def pattern(name: str, source: str) -> Pattern:
    """Compile ``source`` with RE2 and register it under ``name``."""
    try:
        import re2
    except ImportError as exc:  # pragma: no cover - google-re2 is a dependency
        raise ImportError("the personal-data detector needs RE2: pip install google-re2") from exc

    if name in PATTERNS:
        raise ValueError(f"pattern {name!r} is defined twice")
    options = re2.Options()
    options.max_mem = _MAX_MEM
    compiled = cast(Pattern, re2.compile(source, options))
    PATTERNS[name] = compiled
    return compiled


def _normalising_table() -> dict[int, int]:
    # Each entry maps one code point to one code point, so offsets into the
    # normalised text are offsets into the original.
    table = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}  # full-width ASCII
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Nd":
            table[code] = 0x30 + unicodedata.digit(char)  # any script's digits: Arabic-Indic, Devanagari...
        elif category == "Zs":
            table[code] = 0x20  # no-break, thin and ideographic spaces
        elif category == "Pd" or code == 0x2212:
            table[code] = 0x2D  # dashes and the minus sign
    return table


_TABLE: dict[int, int] | None = None


def normalise(text: str) -> str:
    """``text`` with every digit, space and dash read as ASCII, one character for one."""
    global _TABLE
    if text.isascii():
        return text
    if _TABLE is None:
        _TABLE = _normalising_table()  # 70 ms once; a race only builds it twice
    return text.translate(_TABLE)


WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def clear_before(text: str, start: int, forbidden: Iterable[str] | str = WORD) -> bool:
    """True when the character before ``start`` is not one of ``forbidden`` (a look-behind, done cheaply)."""
    return start == 0 or text[start - 1] not in forbidden


def clear_after(text: str, end: int, forbidden: Iterable[str] | str = WORD) -> bool:
    """True when the character at ``end`` is not one of ``forbidden`` (a look-ahead)."""
    return end >= len(text) or text[end] not in forbidden


def near(cue: Pattern, text: str, start: int, window: int = 40) -> bool:
    """True when ``cue`` occurs in the ``window`` characters before ``start``."""
    return cue.search(text[max(0, start - window) : start]) is not None
