"""No input makes the personal-data detector slower than linear in its length.

A backtracking regex fed a 60 KB run of its own alphabet takes quadratic time
and holds the GIL meanwhile (issue 9). Two guards:

* structural: every pattern is compiled by RE2, which matches in linear time,
  and no detector module imports the backtracking ``re``;
* measured: for adversarial inputs built for every pattern (runs of its
  alphabet, repeats of its literal prefixes, near-misses), the time at 64 KB
  is about 8x the time at 8 KB, never the 64x of quadratic growth.

Bounds are generous (best of several runs, a floor for timer noise, a
per-KB ceiling 10x above what is measured on a 2-core machine): the test
catches a blow-up, not a slow CI runner.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from router.classify.detectors._engine import PATTERNS
from router.classify.personal_data import PatternDetector

SMALL, LARGE = 8 * 1024, 64 * 1024
MAX_RATIO = 32.0  # linear is 8, quadratic 64
NOISE_S = 0.025  # below this, a ratio measures the machine's other work (the old stalls took seconds)
MAX_S_PER_KB = 0.04  # ~5 ms/KB measured in the worst family

DETECTOR = PatternDetector()
DETECTOR.load()


def _best(text: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        DETECTOR.detect(text)
        best = min(best, time.perf_counter() - started)
    return best


def _fill(unit: str, size: int) -> str:
    return (unit * (size // max(len(unit), 1) + 1))[:size]


def assert_linear(make: Callable[[int], str], small_size: int = SMALL, large_size: int = LARGE) -> None:
    small = _best(make(small_size), 3)
    large = _best(make(large_size), 1)
    if large > max(MAX_RATIO * small, NOISE_S) or large > MAX_S_PER_KB * large_size / 1024:
        large = min(large, _best(make(large_size), 3))  # one slow run may be the machine, not the input
    per_kb = large / (large_size / 1024)
    sizes = f"{small_size // 1024} KB: {small * 1000:.2f} ms, {large_size // 1024} KB: {large * 1000:.2f} ms"
    assert per_kb <= MAX_S_PER_KB, f"{per_kb * 1000:.1f} ms per KB ({sizes})"
    assert large <= max(MAX_RATIO * small, NOISE_S), sizes


# Families that once stalled the gateway or that stress one finder's Python side.
FAMILIES: dict[str, Callable[[int], str]] = {
    "base64 run ending in padding": lambda n: "A" * (n - 2) + "==",
    "base64 run with padding inside": lambda n: "A" * (n - 3) + "=A=",
    "base64 run ending in too much padding": lambda n: "A" * (n - 3) + "===",
    "repeated eyJ": lambda n: _fill("eyJ", n),
    "repeated JWT-like segments": lambda n: _fill("eyJabcdefgh.", n),
    "repeated sk-": lambda n: _fill("sk-", n),
    "repeated AKIA": lambda n: _fill("AKIA", n),
    "repeated glpat-": lambda n: _fill("glpat-", n),
    "repeated SG.": lambda n: _fill("SG.a", n),
    "digits": lambda n: "4" * n,
    "digits and spaces": lambda n: _fill("1 ", n),
    "digits and dashes": lambda n: _fill("12-", n),
    "digits and dots": lambda n: _fill("1.", n),
    "Arabic-Indic digits": lambda n: _fill("٤١١١ ", n),
    "full-width digits": lambda n: _fill("４１１１－", n),
    "@ run": lambda n: "@" * n,
    "short e-mails": lambda n: _fill("a@b.co", n),
    "long local part": lambda n: "a" * (n - 6) + "@b.com",
    "[at] obfuscations": lambda n: _fill("a [at] b ", n),
    "% run": lambda n: "%" * n,
    "percent escapes": lambda n: _fill("%41", n),
    "capitalised words": lambda n: _fill("Anna ", n),
    "name and street words": lambda n: _fill("John Smith Street ", n),
    "Title Case": lambda n: _fill("The Quick Brown Fox With A Hat ", n),
    "all caps": lambda n: _fill("JOHN ", n),
    "name cues": lambda n: _fill("Dear Mr. ", n),
    "colons": lambda n: ":" * n,
    "hex and colons": lambda n: _fill("a:", n),
    "password cues": lambda n: _fill("password: ", n),
    "password is": lambda n: _fill("password is ", n),
    "bearer": lambda n: _fill("Bearer ", n),
    "URL credentials": lambda n: _fill("http://a:b@", n),
    "house numbers": lambda n: _fill("12 Oak ", n),
    "streets": lambda n: _fill("12 Oak Street, ", n),
    "French streets": lambda n: _fill("14 rue des ", n),
    "German streets": lambda n: _fill("Hauptstraße ", n),
    "phones": lambda n: _fill("+1 415-555-0132 ", n),
    "phone-like": lambda n: _fill("(1) 2-3.4 ", n),
    "IPv4-like": lambda n: _fill("1.2.3.4.", n),
    "IBAN prefixes": lambda n: _fill("DE89 ", n),
    "SSN cue and digits": lambda n: _fill("SSN 123456789 ", n),
    "PEM headers": lambda n: _fill("-----BEGIN PRIVATE KEY-----", n),
    "newlines": lambda n: "\n" * n,
    "CJK": lambda n: _fill("我的电话是", n),
    "mixed personal data": lambda n: _fill(
        "Dear John Smith, card 4111 1111 1111 1111, SSN 536-22-1984, mail a.b@example.com, call +44 20 7946 0958. ", n
    ),
}


@pytest.mark.parametrize("make", FAMILIES.values(), ids=FAMILIES.keys())
def test_adversarial_families_scan_in_linear_time(make: Callable[[int], str]) -> None:
    assert_linear(make)


# Adversarial input derived from each pattern's own source: runs of each character class (alone or
# ending in a near-miss), repeats of each literal, and each literal followed by a run (a prefix that
# almost starts a match, again and again).
_CLASS = re.compile(r"\[\^?((?:\\.|[^\]])+)\]")
_LITERAL = re.compile(r"(?<![\\{])[A-Za-z0-9_@%=:./+\-]{2,}")


_ESCAPES = {
    "\\d": "0123456789",
    "\\s": " \t\n",
    "\\w": "a_1",
    "\\p{L}": "aÄ",
    "\\p{Lu}": "AÖ",
    "\\p{Ll}": "aé",
    "\\p{N}": "7",
}


def _class_chars(body: str) -> str:
    chars = [ch for escape, expansion in _ESCAPES.items() if escape in body for ch in expansion]
    for a, b in re.findall(r"(\\?.)-(\\?.)|", body):
        if a and b and len(a) == 1 and len(b) == 1 and ord(a) < ord(b):
            chars.extend(chr(c) for c in range(ord(a), min(ord(b), ord(a) + 12) + 1))
    chars.extend(ch for ch in re.sub(r"\\[pP]\{\w+\}|\\.|.-.", "", body) if ch.isprintable())
    return "".join(dict.fromkeys(chars)) or "a"


def _derived_inputs() -> dict[str, Callable[[int], str]]:
    out: dict[str, Callable[[int], str]] = {}
    for name, compiled in sorted(PATTERNS.items()):
        source = getattr(compiled, "pattern", "")
        classes = [_class_chars(body) for body in _CLASS.findall(source)][:3] or ["a"]
        bare = re.sub(r"\(\?\w*:?|\\[pP]\{\w+\}|\\.", " ", _CLASS.sub(" ", source))
        literals = list(dict.fromkeys(_LITERAL.findall(bare)))[:3]
        for index, chars in enumerate(classes):
            out[f"{name}: class run {index}"] = lambda n, c=chars: _fill(c, n)
            # One run as long as the input, ending in what a pattern may want next: a backtracking
            # engine retries the whole run from every start (the base64 stall).
            for end in ("===", ".", "@"):
                out[f"{name}: class run {index} then {end!r}"] = lambda n, c=chars, e=end: _fill(c, n - len(e)) + e
        for literal, chars in itertools.product(literals, classes[:1]):
            out[f"{name}: {literal!r} repeated"] = lambda n, lit=literal: _fill(lit, n)
            out[f"{name}: {literal!r} then a run"] = lambda n, lit=literal, c=chars: _fill(lit + c * 8, n)
    # Patterns share alphabets and prefixes: keep one input of each kind.
    unique: dict[str, tuple[str, Callable[[int], str]]] = {}
    for label, make in out.items():
        unique.setdefault(make(256), (label, make))
    return dict(unique.values())


DERIVED = _derived_inputs()


@pytest.mark.parametrize("make", DERIVED.values(), ids=DERIVED.keys())
def test_inputs_built_from_each_pattern_scan_in_linear_time(make: Callable[[int], str]) -> None:
    assert_linear(make, SMALL // 2, LARGE // 2)  # 500 inputs: half size keeps the file under 20 s


def test_every_pattern_is_compiled_by_re2() -> None:
    assert len(PATTERNS) >= 40  # the address patterns are included: DETECTOR.load() compiled them
    for name, compiled in PATTERNS.items():
        assert type(compiled).__module__.startswith("re2"), f"{name} is not an RE2 pattern"


def test_no_detector_module_imports_the_backtracking_engine() -> None:
    root = Path(__file__).parents[2] / "router" / "classify"
    sources = [root / "personal_data.py", root / "checksums.py", *sorted((root / "detectors").glob("*.py"))]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(?:import re\b|from re import)", text, re.M), f"{path.name} imports re"


def test_a_hostile_prompt_finishes_within_a_deadline() -> None:
    # The 60 KB prompts of the issue: each used to take over 10 s.
    for text in ("A" * 61_438 + "==", "eyJ" * 20_480):
        started = time.perf_counter()
        DETECTOR.detect(text)
        assert time.perf_counter() - started < 1.0
