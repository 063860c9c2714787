"""Street addresses: a house number and a street, then the locality that follows.

Street shapes, each an RE2 pattern over the street types in the gazetteer:

* number, street name, street type: "742 Evergreen Terrace", "88 Elm St." (US, UK, AU...);
* number, type, name: "14 Rue des Lilas", "120 boulevard Saint-Germain" (France);
* type, name, number: "Via Roma 10", "Calle de Alcalá 45", "ul. Marszałkowska 84/92";
* name glued to its type, number: "Hauptstraße 12", "Keizersgracht 123" (a type that also ends
  common words, "-ring" as in "Spring 2024", counts only with a postcode after it);
* a post-office or military box; a number and capitalised words after an address cue
  ("I live at ...", "Adresse :", "Flat 3,") or alone on their line.

The span then runs on over the unit, city, state and postcode that follow
("Apt. 932, North Christinaview, MN 24592"), so redaction leaves none of it.
A UK postcode or a US "State ZIP" alone is reported too, with less confidence.
Street words are matched in the Latin script only.

Public landmarks ("10 Downing Street") are flagged like any address: the
detector cannot tell them from a home, and keeping them local costs little.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from router.classify.detectors._engine import Match, Pattern, near, pattern
from router.classify.detectors.gazetteer import gazetteer
from router.features import Span

__all__ = ["addresses", "compile_patterns"]

_NUM = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,5}[A-Za-z]?)?"
_UNIT_BEFORE = r"(?:(?i:flat|apartment|apt\.?|unit|suite|ste\.?|room|building|bldg\.?)[ \t]+[\w\-]{1,6},?[ \t]+)"
_DIRECTION = r"(?i:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?"
# Latin script only, as explicit ranges: the \p{L} class of all scripts, repeated in these
# patterns, would give RE2 automata of 100k+ instructions, each new DFA state costing milliseconds.
_UPPER = "A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽ"
_LETTER = "A-Za-zÀ-ÖØ-öø-ɏ"
_NAME_WORD = rf"[{_LETTER}0-9][{_LETTER}0-9'\x{{2019}}.\-]*"
_PARTICLES = r"(?:de|del|de la|della|delle|dei|des|du|di|da|do|dos|das|la|le|les|el|los|las|d'|l'|y|e|of|the)"
_CAP_WORD = rf"[{_UPPER}0-9][{_LETTER}0-9'\x{{2019}}.\-]*"
_NAME_PART = rf"(?:{_PARTICLES}[ \t]+){{0,2}}{_CAP_WORD}(?:[ \t]+(?:{_PARTICLES}[ \t]+){{0,2}}{_CAP_WORD}){{0,4}}"
_UNIT = r"(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|bldg|#)\.?[ \t]*#?[ \t]*[\w\-]{1,6}"
_POSTCODE = (
    r"(?:[A-Z]{2,3}[ \t]+)?(?:\d{5}-\d{3}|\d{5}(?:-\d{4})?|\d{4}[ \t]?[A-Z]{2}\b|\d{2}-\d{3}|\d{3}[ \t]?\d{3}|\d{4}"
    r"|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d)\b"
)
_CITY_WORD = rf"(?:[{_UPPER}][{_LETTER}'\x{{2019}}.\-]+)"
_CITY = rf"{_CITY_WORD}(?:[ \t]+(?:{_CITY_WORD}|de|du|la|am|upon|sur)){{0,3}}"
_CHUNK = rf"(?:{_POSTCODE}(?:[ \t]+{_CITY})?|{_UNIT}|{_CITY}(?:[ \t]+{_POSTCODE})?|[A-Z]{{2}}\b)"
_SEPARATOR = r"(?:[ \t]*[,\-\x{2013}][ \t]*|[ \t]*\n[ \t]*)"
# One piece of the locality after a street; _tail_end matches up to five in a row.
_FIRST_CHUNK = rf"(?:{_SEPARATOR}{_CHUNK}|[ \t]+(?:{_UNIT}|{_POSTCODE}))"
_NEXT_CHUNK = rf"{_SEPARATOR}{_CHUNK}"

_STOPWORDS = frozenset(
    "the a an of on in to and or my your our at for with by is are was from".split()  # noqa: SIM905 - a word list
)
_ABBREVIATIONS = frozenset(
    "st ave av rd blvd dr ln ct pl sq ter pkwy hwy cir trl cres".split()  # noqa: SIM905 - a word list
)
_US_STATES = frozenset(
    """
    AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT
    NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC
    """.split()  # noqa: SIM905 - a word list reads better as text
)
# Glued types that end common words or cities: "Spring 2024", "Brigade 2", "Copenhagen 2009".
_RISKY_COMPOUNDS = ("ring", "tie", "gade", "hof", "pad", "gata", "berget", "haugen", "lia", "hagen", "moen", "roa",
                    "lei", "marka", "vika", "myra", "ekra", "toppen")  # fmt: skip
# Street types that are English words too: "2 Place Value", "travel via London 2 days".
_ENGLISH_TYPES = frozenset(
    """
    avenue boulevard place route via plaza corso largo camino strada ronda diagonal vale campo lago circuito
    corredor conjunto distrito residencial parque jardim setor area área
    """.split()  # noqa: SIM905 - a word list reads better as text
)


@dataclass(frozen=True)
class _Patterns:
    street: Pattern  # number, words, type
    type_first_us: Pattern  # "3640 Avenue E"
    number_type_name: Pattern  # "14 Rue des Lilas"
    type_name_number: Pattern  # "Via Roma 10"
    compound: Pattern  # "Hauptstraße 12"
    compound_risky: Pattern  # "Heckerring 3", taken only with a postcode after it
    po_box: Pattern
    relaxed: Pattern  # number and capitalised words, accepted with a cue
    first_chunk: Pattern
    next_chunk: Pattern
    cue: Pattern
    uk_postcode: Pattern
    state_zip: Pattern


def _alternation(words: tuple[str, ...]) -> str:
    import re2

    return "|".join(re2.escape(word) for word in sorted(set(words), key=len, reverse=True))


def _compile() -> _Patterns:
    words = gazetteer()
    suffixes = _alternation(words.street_suffixes)
    prefixes = _alternation(words.street_prefixes)
    compounds = _alternation(tuple(c for c in words.street_compounds if c not in _RISKY_COMPOUNDS))
    risky = _alternation(tuple(c for c in words.street_compounds if c in _RISKY_COMPOUNDS))
    return _Patterns(
        street=pattern(
            "address_street",
            rf"(?:{_UNIT_BEFORE})?\b({_NUM}),?[ \t]+((?:{_DIRECTION}[ \t]+)?(?:{_NAME_WORD}[ \t]+){{1,6}})"
            rf"((?i:{suffixes}))\b\.?(?:[ \t]+{_DIRECTION}\b)?",
        ),
        type_first_us=pattern(
            "address_type_first_us",
            rf"\b{_NUM}[ \t]+(?:{_DIRECTION}[ \t]+)?"
            r"(?i:avenue|ave\.?|route|rte\.?|rt\.?|highway|hwy\.?|county road|state road|road|interstate)"
            r"[ \t]+[A-Z0-9]{1,4}\b",
        ),
        number_type_name=pattern(
            "address_number_type_name",
            rf"\b{_NUM}(?:[ \t]*(?i:bis|ter))?,?[ \t]+((?i:{prefixes}))[ \t]+({_PARTICLES}[ \t]+)?{_NAME_PART}",
        ),
        type_name_number=pattern(
            "address_type_name_number",
            rf"(?:^|[^{_LETTER}])(((?i:{prefixes}))[ \t]+({_PARTICLES}[ \t]+)?{_NAME_PART},?[ \t]+{_NUM})\b",
        ),
        compound=pattern(
            "address_compound",
            rf"(?:[{_UPPER}][{_LETTER}'\x{{2019}}\-]*[ \t]+)?[{_UPPER}][{_LETTER}\-]*(?i:{compounds})\.?[ \t]+{_NUM}\b",
        ),
        compound_risky=pattern("address_compound_risky", rf"[{_UPPER}][{_LETTER}\-]*(?i:{risky})[ \t]+{_NUM}\b"),
        po_box=pattern(
            "address_po_box",
            r"(?i:\bp\.?[ \t]?o\.?[ \t]?box|\bpost office box|\bpostfach|\bapartado(?: de correos)?|\bcaixa postal"
            r"|\bbo[iî]te postale)[ \t]*#?[ \t]*\d{1,6}\b"
            r"|\b(?:PSC|CMR|Unit)[ \t]+\d{1,5},?[ \t]+Box[ \t]+\d{1,5}\b",  # US military mail
        ),
        relaxed=pattern(
            "address_relaxed",
            rf"({_UNIT_BEFORE})?\b{_NUM},?[ \t]+({_DIRECTION}[ \t]+)?[{_UPPER}][{_LETTER}0-9'\x{{2019}}.\-]*"
            rf"(?:[ \t]+{_CAP_WORD}){{0,4}}",
        ),
        first_chunk=pattern("address_tail_first", _FIRST_CHUNK),
        next_chunk=pattern("address_tail_next", _NEXT_CHUNK),
        cue=pattern(
            "address_cue",
            r"(?i:\b(?:i live (?:at|on|in)|i'm at|lives? at|my address|address(?: is)?|addr\.?|ship(?:ping)?(?: it)? to"
            r"|deliver(?:y)?(?: it)? to|located at|moved to|send (?:it |this |the \w+ )?to|mail (?:it )?to"
            r"|pick me up at|return address|home address|adresse|anschrift|wohne(?: in)?(?: der)?|wohnhaft"
            r"|direcci[oó]n|indirizzo|endere[cç]o|adres|abito in|vivo en|moro na|j'habite(?: au)?))[\s:,\-]*$",
        ),
        uk_postcode=pattern("address_uk_postcode", r"\b[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]?[ \t]?\d[ABD-HJLNP-UW-Z]{2}\b"),
        state_zip=pattern("address_state_zip", r"\b([A-Z]{2})[ \t]+\d{5}(?:-\d{4})?\b"),
    )


_lock = threading.Lock()
_compiled: _Patterns | None = None


def compile_patterns() -> _Patterns:
    """The address patterns, built from the gazetteer on first use."""
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _compile()
    return _compiled


def _tail_end(p: _Patterns, text: str, end: int) -> tuple[int, bool]:
    """Where the locality after a street ends, and whether it held a postcode or unit."""
    held, chunk = False, p.first_chunk
    for _ in range(5):
        m = chunk.match(text[end : end + 60])
        if m is None or not m.group():
            break
        held = held or any(ch.isdigit() for ch in m.group())
        end, chunk = end + m.end(), p.next_chunk
        if text[end - 1] == "." and text[end - 2 : end - 1].islower():
            end -= 1  # the full stop of the sentence, not of an abbreviation ("Springfield." vs "N.Y.")
            break
    return end, held


# Street types that are no landmark: after a year ("in 1937 Golden Gate Bridge") only these make a street.
_ROADS = frozenset(
    """
    street st avenue ave road rd boulevard blvd lane ln drive dr court ct way place pl terrace ter circle cir
    parkway pkwy highway hwy trail trl crescent cres close
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_DIRECTIONS = frozenset("n s e w ne nw se sw north south east west".split())  # noqa: SIM905 - a word list


def _year_like(number: str, words: list[str]) -> bool:
    """A number that reads as a year: 1500-2099, not followed by a direction ("1951 W 19th St")."""
    if words and words[0].rstrip(".").lower() in _DIRECTIONS:
        return False
    return len(number) == 4 and number.isdigit() and 1500 <= int(number) <= 2099


def _own_line(text: str, start: int, end: int) -> bool:
    """The address is all its line holds (a form, a letter head, a signature)."""
    lo = max(0, start - 80)
    before = text[lo:start].rsplit("\n", 1)
    if len(before) == 1 and lo > 0:
        return False  # a long line
    line_end = text.find("\n", end, end + 80)
    if line_end < 0 and end + 80 < len(text):
        return False
    rest = text[end : len(text) if line_end < 0 else line_end]
    return not before[-1].strip(" \t:-,") and not rest.strip(" \t.,;")


def _streets(p: _Patterns, text: str) -> Iterator[Span]:
    for m in p.street.finditer(text):
        number, words, suffix = m.group(1), m.group(2).split(), m.group(3)
        end, held = _tail_end(p, text, m.end())
        capitalised = all(w[0].isupper() or w[0].isdigit() for w in words) and suffix[0].isupper()
        cue = near(p.cue, text, m.start())
        if capitalised:
            ok = not _year_like(number, words) or suffix.lower() in _ROADS or held or cue
        else:
            plain = not any(w.lower() in _STOPWORDS for w in words)
            ok = plain and (suffix.lower() in _ABBREVIATIONS or held or cue)
        if ok:
            yield Span("street_address", m.start(), end, 0.8 if capitalised else 0.7)


def _foreign_enough(p: _Patterns, text: str, m: Match, street_type: int, particle: int) -> bool:
    """ "14 rue des Lilas" or "Via Roma 10", but not "2 Place Value" or "via London 2"."""
    word = m.group(street_type)
    if word.lower() not in _ENGLISH_TYPES:
        return True
    return m.start(particle) >= 0 or (word[0].isupper() and word.lower() in ("via", "corso", "largo", "strada"))


def _shapes(p: _Patterns, text: str) -> Iterator[Span]:
    for shape in (p.type_first_us, p.compound, p.po_box):
        for m in shape.finditer(text):
            end, _ = _tail_end(p, text, m.end())
            yield Span("street_address", m.start(), end, 0.8)
    for m in p.compound_risky.finditer(text):
        end, held = _tail_end(p, text, m.end())
        if held:
            yield Span("street_address", m.start(), end, 0.8)
    for m in p.number_type_name.finditer(text):
        end, held = _tail_end(p, text, m.end())
        if held or _foreign_enough(p, text, m, 1, 2) or near(p.cue, text, m.start()):
            yield Span("street_address", m.start(), end, 0.8)
    for m in p.type_name_number.finditer(text):
        end, held = _tail_end(p, text, m.end(1))
        if held or _foreign_enough(p, text, m, 2, 3) or near(p.cue, text, m.start(1)):
            yield Span("street_address", m.start(1), end, 0.8)


def _relaxed(p: _Patterns, text: str) -> Iterator[Span]:
    for m in p.relaxed.finditer(text):
        end, held = _tail_end(p, text, m.end())
        unit_before = m.start(1) >= 0
        alone = (held or m.start(2) >= 0) and _own_line(text, m.start(), end)
        if unit_before or alone or near(p.cue, text, m.start()):
            yield Span("street_address", m.start(), end, 0.7)


def _postcodes(p: _Patterns, text: str) -> Iterator[Span]:
    for m in p.uk_postcode.finditer(text):
        yield Span("street_address", m.start(), m.end(), 0.6)
    for match in p.state_zip.finditer(text):
        if _state(match):
            yield Span("street_address", match.start(), match.end(), 0.6)


def _state(m: Match) -> bool:
    return m.group(1) in _US_STATES


def addresses(text: str) -> Iterator[Span]:
    """Street addresses in ``text`` (call it only when the text holds a digit: every shape has one)."""
    p = compile_patterns()
    yield from _streets(p, text)
    yield from _shapes(p, text)
    yield from _relaxed(p, text)
    yield from _postcodes(p, text)
