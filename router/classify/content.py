"""Does a prompt contain code, or math? Cheap signals, used by policies and the rule-based difficulty."""

from __future__ import annotations

import re

__all__ = ["has_code", "has_math"]

# Every repetition that could start at many places is bounded or anchored, so
# a search is linear in the text: unbounded ``\w+\(.*\)`` and ``[^>]*`` were
# quadratic on a long run of letters or of ``<a`` (0.5 s on 60 KB, on the event loop).
_CODE = re.compile(
    r"```|^[ \t]*(?:def|class|import|from|function|const|let|var|public|private|#include|package|fn|func|SELECT|"
    r"CREATE TABLE)\b|[{};][ \t]*$|=>|->\s*\w|(?<!\w)\w{1,64}\([^\n]{0,200}\)[ \t]*[{:][ \t]*$"
    r"|</?[a-z]{1,16}[^>\n]{0,200}>",
    re.MULTILINE,
)
_MATH = re.compile(
    r"\$[^$\n]{1,200}\$|\\(?:frac|sqrt|sum|int|cdot|times|alpha|beta|pi|theta)\b|\d\s*[-+*/^\u00d7\u00f7=]\s*\d|[∑∫√π≤≥≠∞]"
    r"|\b(?:solve|equation|integral|derivative|probability|calculate|compute|how many|how much|percent)\b",
    re.IGNORECASE,
)


def has_code(text: str) -> bool:
    """Fenced blocks, statement keywords at line starts, braces and arrows, tags.

    >>> has_code("def f(x):\\n    return x"), has_code("I defined my goals")
    (True, False)
    """
    return _CODE.search(text) is not None


def has_math(text: str) -> bool:
    """Formulas, operators between numbers, LaTeX, math symbols or math-problem words.

    >>> has_math("What is 12 * 7?"), has_math("Tell me about Paris")
    (True, False)
    """
    return _MATH.search(text) is not None
