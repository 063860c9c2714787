"""The code and math signals run on the event loop for every request: their regexes must be linear.

Each adversarial text is timed at 4 KB and 32 KB (best of three). A linear
scan takes about 8x longer on the larger one; a backtracking one about 64x.
The bound (24x) leaves room for a noisy, shared machine without letting a
quadratic pattern through, and the absolute bound catches one that is slow
on both.
"""

from __future__ import annotations

import time

import pytest

from router.classify.content import has_code, has_math
from router.classify.difficulty import rule_based_difficulty

UNITS = ["A", "eyJ", "AKIA", "a(", "f(x) ", "<a", "<a ", "$a", "1 ", "1+", " ", "\n", "\n ", "{ ", "x->", "=>"]


def worst_seconds(unit: str, size: int) -> float:
    text = unit * (size // len(unit))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        has_code(text)
        has_math(text)
        rule_based_difficulty(prompt_tokens=size // 4, has_code=False, has_math=False, text=text)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("unit", UNITS)
def test_content_signals_are_linear_on_adversarial_input(unit: str) -> None:
    small, large = worst_seconds(unit, 4 * 1024), worst_seconds(unit, 32 * 1024)
    assert large < 0.05, f"{unit!r}: {large * 1000:.1f} ms on 32 KB"
    assert large < 24 * max(small, 2e-5), f"{unit!r}: grows {large / small:.0f}x for 8x the text"
