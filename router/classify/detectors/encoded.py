"""Personal data hidden in a URL-encoded component or a base64 blob.

Each encoded token is decoded once and scanned by the plain finders (no
second level of decoding); what is found is reported as a span over the
whole encoded token, with ``via`` saying how it was hidden.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Callable, Iterable, Iterator

from router.classify.detectors._engine import clear_before, normalise, pattern
from router.features import Span

__all__ = ["decoded"]

Finder = Callable[[str], Iterable[Span]]

# A whitespace-delimited token holding a %XX escape, or a URL query that writes spaces as "+"
# ("?q=4111+1111+1111+1111"): both are read as application/x-www-form-urlencoded.
_URL_TOKEN = pattern("url_encoded_token", r"[^\s\"'<>]*(?:%[0-9A-Fa-f]{2}|\?[^\s\"'<>]*\+)[^\s\"'<>]*")
_BASE64 = pattern("base64_blob", r"[A-Za-z0-9+/_\-]{16,}={0,2}")
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")


def _base64_text(blob: str) -> str | None:
    """The blob decoded as mostly printable UTF-8 text, or None."""
    if len(blob.rstrip("=")) % 4 == 1:
        return None
    padded = blob.rstrip("=") + "=" * (-len(blob.rstrip("=")) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if text and printable / len(text) > 0.95 else None


def decoded(text: str, plain: Finder) -> Iterator[Span]:
    if "%" in text or ("?" in text and "+" in text):
        for m in _URL_TOKEN.finditer(text):
            inner = normalise(urllib.parse.unquote_plus(m.group()))
            for span in plain(inner):
                yield Span(span.kind, m.start(), m.end(), round(span.confidence * 0.95, 3), via="url")
    for m in _BASE64.finditer(text):
        if not clear_before(text, m.start(), _BASE64_CHARS):
            continue
        inner_text = _base64_text(m.group())
        if inner_text:
            for span in plain(normalise(inner_text)):
                yield Span(span.kind, m.start(), m.end(), round(span.confidence * 0.9, 3), via="base64")
