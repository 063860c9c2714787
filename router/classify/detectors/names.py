"""Person names: runs of capitalised words scored by a name gazetteer and the words around them.

A run such as "Thanks to Oluwaseun Adeyemi for" is cut down to its name-like
words, then scored by what its first and last words are:

* a given name or surname from the gazetteer (``name``),
* a gazetteer name that is also a common word or a place (``weak``: "Grace", "Paris"),
* a word in no list (``unknown``: most surnames of the world are here).

The words before it add or take away: a name introducer ("my name is",
"Dear", "Signed:", "Dr.", "my colleague") adds, a public-figure cue ("Who
was", "President", "What did", "'s Starry Night") takes away. One word alone
is a name only after an introducer. Names in lower case are found only right
after "my name is" and the like.

A famous person is personal data to no one, but a detector cannot tell
Abraham Lincoln from a neighbour: only the cues above spare the obvious
questions, and a bare public name is flagged (it then stays on the machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from router.classify.detectors._engine import Match, pattern
from router.classify.detectors.gazetteer import Gazetteer, gazetteer
from router.features import Span

__all__ = ["names"]

# A capitalised word ("Anna", "O'Connell", "McDonald", "Mei-Ling", "ØBERG") or an initial ("F.").
# One letter class, not a finer grammar: repeated \p{...} classes make RE2 automata that cost
# milliseconds per new DFA state. _tokens sorts the words out ("Smith's" loses its "'s").
_WORD = r"\p{Lu}(?:[\p{L}\p{M}'\x{2019}\-]*|\.)"
_PARTICLE = r"(?:van|von|der|den|de|del|della|di|da|dos|das|du|le|la|bin|binti|ibn|al|el|ter|ten|zu|af|y)"
_RUN = pattern("name_run", rf"{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+){{0,2}}{_WORD})*")
_PARTICLES = frozenset(_PARTICLE[3:-1].split("|"))

_STRONG_CUES = (
    r"my name is|name is|i am|i'm|call me|this is|dear|hi|hello|hey|thanks to|thank you|thanks|signed|sincerely"
    r"|regards|cheers|yours truly|from:|to:|cc:|attn:?|contact(?: person)?:|name:|patient|client|customer|employee"
    r"|tenant|landlord|colleague|co-?worker|manager|boss|friend|wife|husband|son|daughter|mother|father|mom|mum|dad"
    r"|brother|sister|grand(?:mother|father|ma|pa|son|daughter)|uncle|aunt|cousin|partner|fianc[ée]e?|neighbou?r"
    r"|mr|mrs|ms|miss|mx|dr|prof|signed by|sent by|treated by|cv of|record of|email from|message (?:to|from)"
    r"|reply to|letter for|card for"
)
_WEAK_CUES = (
    r"to|from|with|for|by|and|ask|tell|call|email|e-mail|text|meet|met|cc|remind|let|invite|hired|assign|help|about"
    r"|of|is|get|book|named|called"
)
_PUBLIC_CUES = (
    r"who (?:was|is|were)|what (?:did|was|is|were)|why did|how did|when did|where did|president|king|queen|pope"
    r"|saint|st\.|emperor|prince|princess|general|senator|governor|chancellor|premier|prime minister|the (?:author"
    r"|painter|composer|scientist|poet|philosopher|novelist|actor|actress|singer|artist|writer|inventor|physicist"
    r"|chemist|mathematician)"
)
# One search of the words just before a run tells which cue, if any, ends there. Leftmost wins, so the
# longer cue ("my name is", "Prejudice by") is preferred to the shorter one inside it ("is", "by").
_CUE_BEFORE = pattern(
    "name_cue_before",
    rf"(?:(\p{{Lu}}\p{{L}}*\s+by)|(?i:\b(?:({_PUBLIC_CUES})|({_STRONG_CUES})|(the)|({_WEAK_CUES}))))[\s.,:;\-]*$",
)
_CUE_SCORES = {1: -0.45, 2: -0.45, 3: 0.35, 4: -0.35, 5: 0.05}  # work by, public, strong, article, weak
# Capitalised function words ("Because It Did A Deal With") mark a Title Case Headline, where capitals say nothing.
_TITLE_CASE = pattern(
    "name_title_case",
    r"\b(?:The|A|An|And|Or|But|Of|To|In|On|At|For|With|By|From|Is|Are|Was|Were|It|Its|Did|Do|Does|You|Your|My|We"
    r"|Our|Be|Before|After|Because|Not|No|Up|Out|Into|Over|About|How|Why|What|This|That|All|Just|Like|Will)\b",
)
# "Van Gogh's Starry Night", "Adam Smith's The Wealth of Nations", "Dijkstra's algorithm".
_WORK_AFTER = pattern(
    "name_cue_work_after",
    r"['\x{2019}]s?\s+(?:\p{Lu}|(?:\p{Ll}+\s+)?(?:algorithm|theorem|law|laws|principle|equation|constant"
    r"|conjecture|paradox|problem|method|rule|formula|lemma|test|distribution|syndrome|disease|number|razor|theory"
    r"|effect|experiment)\b)",
)
# "Juan's number", "Mia's birthday": a given name owning a thing is a person.
_POSSESSIVE = pattern("name_cue_possessive", r"['\x{2019}]s\s+\p{Ll}")
_LOWER_INTRO = pattern(
    "name_lowercase_intro",
    r"(?i)\b(?:my name is|name:|i am|i'm|call me|this is)"
    r"[ \t]+(\p{L}[\p{L}'\x{2019}\-]*)(?:[ \t]+(\p{L}[\p{L}'\x{2019}\-]*))?",
)

_CONTEXT = 40
# Below this a run is not reported at all (the detector's own threshold is applied after).
_FLOOR = 0.45

# Score of a run from the classes of its first and last words (order-free: family names come first in many countries).
_PAIR = {
    frozenset({"name"}): 0.8,
    frozenset({"name", "unknown"}): 0.65,
    frozenset({"name", "weak"}): 0.6,
    frozenset({"weak"}): 0.45,
    frozenset({"weak", "unknown"}): 0.4,
    frozenset({"unknown"}): 0.3,
}
_SINGLE = {"name": 0.35, "weak": 0.25, "unknown": 0.25}


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int
    kind: str  # name | weak | unknown | common | initial | particle


# Endings that mark a surname in many languages: Shevchenko, Kowalczyk, Nowakowski, Petrović,
# Papadopoulos, Popescu, Karaoglu, Beridze, Hovhannisyan, Ivanova.
_SURNAME_ENDINGS = ("enko", "chuk", "czyk", "wicz", "ski", "ska", "sky", "skaya", "ović", "ovic", "evic",
                    "opoulos", "idis", "akis", "escu", "oglu", "oğlu", "shvili", "dze", "yan", "ova", "eva", "ov",
                    "ev")  # fmt: skip


def _kind(word: str, words: Gazetteer, head: bool) -> str:
    """The class of a word; a place weakens a name only where a given name would stand ("Paris Hilton")."""
    if len(word) == 2 and word.endswith("."):
        return "initial"
    folded = word.casefold()
    # "I'm", "We've", "It's": a contraction of a function word is one too.
    base = folded.replace("\u2019", "'").split("'", 1)[0]
    if len(word) == 1 or folded in words.function_words or base in words.function_words:
        return "common"  # "I", "My", "Rd"
    if folded in _PARTICLES and word.islower():
        return "particle"
    is_name = folded in words.first_names or folded in words.last_names
    common = folded in words.common_words or (head and folded in words.places)
    if not is_name and folded in words.places:
        return "common"
    if common:
        return "weak" if is_name else "common"
    if not is_name and len(folded) >= 6 and folded.endswith(_SURNAME_ENDINGS):
        is_name = True
    return "name" if is_name else "unknown"


_POSSESSIVE_ENDINGS = ("'s", "\u2019s", "'", "\u2019")


def _tokens(run: Match, words: Gazetteer) -> list[list[_Token]]:
    """The run's words, in groups: a possessive ("Smith's") ends a group, as it ends a name."""
    # The words are separated by blanks only, so a split finds them (cheaper than a second regex).
    groups: list[list[_Token]] = [[]]
    text, offset, index = run.group(), run.start(), 0
    for raw in text.split():
        index = text.index(raw, index)
        word = raw.rstrip("-")
        possessive = word.endswith(_POSSESSIVE_ENDINGS) and len(word) > 2
        if possessive:
            word = word[: -2 if word.endswith("s") else -1]
        tokens = groups[-1]
        head = not tokens or tokens[-1].kind == "common"
        tokens.append(_Token(word, offset + index, offset + index + len(word), _kind(word, words, head)))
        index += len(raw)
        if possessive:
            groups.append([])
    return [group for group in groups if group]


def _pieces(tokens: list[_Token]) -> Iterator[list[_Token]]:
    """Stretches of name-like words: common words and acronyms split a run and are trimmed off its ends."""
    shouting = all(t.text.isupper() for t in tokens)
    piece: list[_Token] = []
    for token in [*tokens, None]:
        acronym = token is not None and not shouting and len(token.text) > 1 and token.text.isupper()
        if token is None or token.kind == "common" or acronym:
            while piece and piece[-1].kind in ("particle", "initial"):
                piece.pop()
            while piece and piece[0].kind == "particle":
                piece.pop(0)
            if piece:
                yield piece
            piece = []
        else:
            piece.append(token)


def _context_score(text: str, start: int, end: int) -> float:
    """What the words around a run add: a strong cue, a weak one, or a public figure, a work or an article."""
    if _WORK_AFTER.match(text[end : end + 32]):
        return -0.45
    m = _CUE_BEFORE.search(text[max(0, start - _CONTEXT) : start])
    if m is None:
        return 0.0
    return next((score for group, score in _CUE_SCORES.items() if m.start(group) >= 0), 0.0)


def _score(piece: list[_Token]) -> float:
    ends = [t for t in (piece[0], piece[-1]) if t.kind != "initial"]
    if len(piece) == 1 or len(ends) < 2:
        return _SINGLE.get(piece[0].kind, 0.0) if len(piece) == 1 else 0.3
    score = _PAIR.get(frozenset(t.kind for t in ends), 0.0)
    if len(piece) >= 4 and any(t.kind == "unknown" for t in piece[1:-1]):
        score -= 0.2  # "Accounts Payable Coordinator North York": long names are made of names
    return score


def _headline(text: str, start: int, end: int) -> bool:
    """Function words are capitalised around the run: a title or a heading, where capitals say nothing."""
    window = text[max(0, start - 60) : end + 60]
    return sum(1 for _ in _TITLE_CASE.finditer(window)) >= 3


_GLUED = frozenset("@#_/") | frozenset("0123456789")


def _capitalised(text: str, words: Gazetteer) -> Iterator[Span]:
    for run in _RUN.finditer(text):
        if run.end() - run.start() <= 3 and run.group().isupper():
            continue  # an acronym
        groups = _tokens(run, words)
        if run.start() and (text[run.start() - 1] in _GLUED or text[run.start() - 1].isalpha()):
            groups[0] = groups[0][1:]  # the tail of a handle, hashtag or camelCase word: "@JoshRamsayArmy"
        for piece in (piece for group in groups for piece in _pieces(group)):
            start, end = piece[0].start, piece[-1].end
            shouted = all(t.text.isupper() for t in piece if t.kind != "initial")
            if shouted and (len(piece) == 1 or {piece[0].kind, piece[-1].kind} != {"name"}):
                continue  # an acronym, or capitals that hide which words are names
            base = _score(piece)
            if base + 0.35 < _FLOOR:
                continue  # not even a strong cue would make it a name: spare the context searches
            score = base + _context_score(text, start, end)
            if len(piece) == 1 and piece[0].kind == "name" and _POSSESSIVE.match(text[end : end + 4]):
                score += 0.25  # "Mia's birthday" ("Dijkstra's algorithm" lost its points above)
            if _FLOOR <= score < 0.75 and _headline(text, start, end):
                score -= 0.3
            if score >= _FLOOR:
                yield Span("person_name", start, end, round(min(0.9, score), 2))


def _lowercase(text: str, words: Gazetteer) -> Iterator[Span]:
    for m in _LOWER_INTRO.finditer(text):
        first = m.group(1)
        folded = first.casefold()
        if not first.islower() or folded not in words.first_names or folded in words.common_words:
            continue
        if folded in words.function_words:  # "this is an emergency", "is my first time"
            continue
        end = m.end(1)
        second = m.group(2) if m.start(2) >= 0 else ""
        if second.islower() and second.casefold() in words.last_names and second.casefold() not in words.common_words:
            end = m.end(2)
        yield Span("person_name", m.start(1), end, 0.7)


def names(text: str) -> Iterator[Span]:
    words = gazetteer()
    yield from _capitalised(text, words)
    yield from _lowercase(text, words)
