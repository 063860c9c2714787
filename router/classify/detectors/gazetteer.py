"""Word lists for names and addresses, read from Faker's locale data (MIT).

Faker ships, for about 80 locales, the given names and surnames a country
uses, its street types ("Street", "rue", "-straße") and its place names.
That is the broadest name list on PyPI with a clean licence (59,000 given
and family names). Reading it imports about 200 of Faker's locale modules:
0.3 s and 40 MB of RSS, once per process, on first use or at start-up, under
a lock (:func:`gazetteer`). Nothing is downloaded.

``common_words`` are capitalised words that are not names: Faker's English
lorem, job and company words, colours and currencies, and the function
words below; ``places`` are Faker's countries, regions and cities. A
capitalised pair is a name only when its words are names, or unknown, never
when they are common ("Paris Agreement").
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["Gazetteer", "gazetteer"]

# Words that are often capitalised and never names. Kept short: Faker's lists do the rest.
_FUNCTION_WORDS = """
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just let me more most my myself no nor not now
of off on once only or other our ours out over own same she should so some such than that the their theirs them
then there these they this those through to too under until up very was we were what when where which while who
whom why with would you your yours yourself please thanks thank hello hi dear yes okay ok sure maybe today
tomorrow yesterday tonight morning evening night week month year monday tuesday wednesday thursday friday
saturday sunday january february march july september october november december
new old north south east west northern southern eastern western central united great little big first last
next best good bad happy summary note notes update question answer example chapter section part table figure
step steps task tasks item items list total subject re fw fwd urgent important re: regards sincerely cheers
mr mrs ms miss dr prof sir madam st saint lord lady king queen prince princess president senator governor
general captain doctor professor chief officer manager director team group company inc ltd llc corp co
university college school hospital church bank airport station street avenue road park lake river mount
mountain island bay beach valley city town county state country republic kingdom empire war battle treaty
agreement act law day night world cup league club award prize festival museum gallery theatre theater hotel
restaurant cafe market centre center building tower bridge house hall palace castle garden gardens square
pro plus ultra mini lite max premium series model version edition standard deluxe
""".split()  # noqa: SIM905 - a word list reads better as text

# Attribute names of Faker's person providers: "first_names_female", "first_romanized_names",
# "first_name_pairs" (Japanese kanji, kana and romaji), "last_names_hinduism"...
_GIVEN_PREFIXES = ("first_name", "first_romanized", "middle_name")
_FAMILY_PREFIXES = ("last_name", "last_romanized", "male_last", "unisex_last")
_PLACES = ("countries", "states", "provinces", "cities", "city_names", "regions", "real_city_names", "prefectures")
# English lists only: other languages' words are names here ("Carlos" is Spanish lorem).
_COMMON_LISTS = {
    "lorem": ("word_list",),
    "job": ("jobs",),
    "company": ("catch_phrase_words", "bsWords", "company_suffixes"),
    "color": ("all_colors", "safe_colors"),
    "currency": ("currencies",),
}
# English-speaking locales, whose street types follow the name ("Elm Street", "Laura Knolls").
_SUFFIX_LOCALES = ("en_US", "en_GB", "en_AU", "en_NZ", "en_CA", "en_PH")
# Street types Faker's lists leave out: the usual abbreviations and a few British words.
_EXTRA_SUFFIXES = ("St", "Ave", "Av", "Rd", "Blvd", "Ln", "Dr", "Ct", "Pl", "Sq", "Ter", "Pkwy", "Hwy", "Cir",
                   "Trl", "Cres", "Cl", "Gdns", "Mews", "Row", "Close", "Wynd", "Esplanade", "Broadway", "Concourse",
                   "Strip")  # fmt: skip
# Locales whose street types come before the name ("Via Roma", "Rua Augusta") or are glued to it
# ("Hauptstraße", "Skolgatan"). Faker's Italian "suffixes" are prefixes.
_PREFIX_LOCALES = ("fr_FR", "fr_CA", "es_ES", "es_MX", "es_AR", "es_CL", "es_CO", "it_IT", "pt_BR", "pt_PT", "ro_RO",
                   "pl_PL", "id_ID")  # fmt: skip
_COMPOUND_LOCALES = ("de_DE", "de_AT", "de_CH", "nl_NL", "nl_BE", "sv_SE", "da_DK", "no_NO", "fi_FI", "hu_HU")
# Street types written before the name that Faker's lists lack (and the short forms people write).
_PREFIXES = ("rue", "avenue", "boulevard", "bd", "chemin", "allée", "impasse", "quai", "place", "route", "via", "viale",
             "piazza", "piazzale", "corso", "largo", "vicolo", "strada", "calle", "carrer", "avenida", "av.", "avda.",
             "paseo", "plaza", "camino", "carrera", "rambla", "ronda", "glorieta", "praça", "rua", "travessa",
             "alameda", "estrada", "rodovia", "ul.", "ulica", "al.", "aleja", "plac", "strada", "bulevardul", "aleea",
             "șoseaua", "soseaua", "jalan", "jl.")  # fmt: skip
_COMPOUND_SUFFIXES = ("straße", "strasse", "str.", "gasse", "weg", "platz", "allee", "ring", "damm", "ufer", "chaussee",
                      "steig", "pfad", "markt", "gracht", "straat", "laan", "plein", "kade", "singel", "dreef", "steeg",
                      "gatan", "vägen", "gata", "gade", "vej", "katu", "tie", "utca")  # fmt: skip


@dataclass(frozen=True)
class Gazetteer:
    """Case-folded word sets for the name finder and street types for the address finder."""

    first_names: frozenset[str]
    last_names: frozenset[str]
    common_words: frozenset[str]  # no places among them
    places: frozenset[str]
    function_words: frozenset[str]  # never a name, even where Faker lists one ("My", "Will")
    street_suffixes: tuple[str, ...]  # after the street name: "Street", "Knolls", "St"
    street_prefixes: tuple[str, ...]  # before it, lower-cased: "rue", "via", "calle"
    street_compounds: tuple[str, ...]  # glued to it: "-straße", "-gracht"


def _modules(package: str) -> Iterable[ModuleType]:
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        yield importlib.import_module(f"{package}.{info.name}")
    yield root


def _strings(value: Any) -> Iterable[str]:
    """The strings in one of Faker's lists, dicts of weights or tuples of coordinates."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list | tuple | set | frozenset):
        for item in value:
            yield from _strings(item)


def _person_names(prefixes: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for module in _modules("faker.providers.person"):
        provider = getattr(module, "Provider", None)
        for attribute, value in vars(provider).items() if provider is not None else ():
            if attribute.startswith(prefixes) and "format" not in attribute:
                out.update(name.casefold() for name in _strings(value) if name.isalpha())
    return out


def _collect(package: str, attributes: Iterable[str], locales: Iterable[str] = ()) -> set[str]:
    out: set[str] = set()
    names = tuple(attributes)
    modules = [importlib.import_module(f"{package}.{locale}") for locale in locales] if locales else _modules(package)
    for module in modules:
        provider = getattr(module, "Provider", None)
        for name in names:
            out.update(_strings(vars(provider).get(name) if provider is not None else None))
    return out


def _words(phrases: Iterable[str]) -> set[str]:
    return {word.casefold() for phrase in phrases for word in phrase.replace("-", " ").split() if word.isalpha()}


def _load() -> Gazetteer:
    first = _person_names(_GIVEN_PREFIXES)
    last = _person_names(_FAMILY_PREFIXES)
    places = _words(_collect("faker.providers.address", _PLACES))
    places |= _words(coords[2] for coords in _collect_coords())
    common = set(_FUNCTION_WORDS)
    for package, attributes in _COMMON_LISTS.items():
        common |= _words(_collect(f"faker.providers.{package}", attributes, ("en_US",)))
    suffixes = _collect("faker.providers.address", ("street_suffixes",), _SUFFIX_LOCALES)
    prefixes = _collect(
        "faker.providers.address",
        ("street_prefixes", "street_prefixes_long", "street_prefixes_short", "street_suffixes"),
        _PREFIX_LOCALES,
    )
    compounds = _collect(
        "faker.providers.address",
        ("street_suffixes", "street_suffixes_short", "street_suffixes_long"),
        _COMPOUND_LOCALES,
    )
    return Gazetteer(
        first_names=frozenset(first),
        last_names=frozenset(last),
        common_words=frozenset(common - places),
        places=frozenset(places),
        function_words=frozenset(_FUNCTION_WORDS) | {s.casefold() for s in _EXTRA_SUFFIXES},
        street_suffixes=tuple(sorted({s for s in suffixes if s.isalpha() and len(s) > 1} | set(_EXTRA_SUFFIXES))),
        # Faker's Italian list doubles as a suffix list ("Street" in most locales): only real words of 3+ letters.
        street_prefixes=_sorted(
            {p.strip().lower() for p in prefixes if _street_word(p)} - _NOT_STREET_TYPES, _PREFIXES
        ),
        street_compounds=_sorted(
            {c.strip().lower() for c in compounds if _street_word(c)} - _NOT_STREET_TYPES, _COMPOUND_SUFFIXES
        ),
    )


# Entries of those lists that are no street type: placeholders, "Norte"/"Sur" (es_CO suffixes), English
# words ("gang"), and the English default Faker gives locales without a list.
_NOT_STREET_TYPES = frozenset({"street", "bis", "este", "norte", "sur", "gang", "rang", "favela", "boulevard"})


def _street_word(word: str) -> bool:
    return len(word.strip(" .")) > 2 and "{" not in word


def _sorted(found: set[str], extra: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(found | set(extra)))


def _collect_coords() -> list[tuple[str, ...]]:
    """Faker's real place names: (latitude, longitude, name, country, zone) tuples."""
    out: list[tuple[str, ...]] = []
    for module in _modules("faker.providers.geo"):
        provider = getattr(module, "Provider", None)
        for coords in vars(provider).get("land_coords", ()) if provider is not None else ():
            if isinstance(coords, tuple) and len(coords) > 2 and isinstance(coords[2], str):
                out.append(coords)
    return out


_lock = threading.Lock()
_loaded: Gazetteer | None = None


def gazetteer() -> Gazetteer:
    """The word lists, read from Faker on the first call (about 0.15 s), shared after."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                try:
                    _loaded = _load()
                except ImportError as exc:  # pragma: no cover - faker is a dependency
                    raise ImportError("the name and address finders need Faker: pip install faker") from exc
    return _loaded
