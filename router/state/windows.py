"""The arithmetic every store shares: money in micro-dollars, budget periods, and the sliding rate window.

Stores only keep counters; what a counter is called and whether a request
fits are decided here, once, so SQLite, Redis and the fake cannot drift
(Redis's Lua repeats only the one comparison :func:`fits` makes, in the
same integer form).

>>> counter_for(BudgetScope("tenant:acme", "month", 10.0), now=1_775_000_000.0)
Counter(name='tenant:acme|month|2026-03', ends_at=1775001600.0)
>>> wait_ms(prev=60, cur=0, cost=1, limit=60, elapsed_ms=0, width_ms=60_000)  # a 60th of the minute slides out
1000
"""

from __future__ import annotations

import calendar
import functools
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from router.state.base import BudgetExceeded, BudgetScope, RateDecision, RateScope, Reservation, Window

__all__ = [
    "COUNTER_GRACE_S",
    "FINISHED_TTL_S",
    "RATE_WIDTH_MS",
    "BudgetCharge",
    "Counter",
    "RateCounter",
    "bucket_of",
    "budget_plan",
    "counter_for",
    "decide",
    "fits",
    "new_hold",
    "rate_plan",
    "refusal",
    "to_micros",
    "to_usd",
    "wait_ms",
]

MICROS = 1_000_000
COUNTER_GRACE_S = 86_400.0
"""A budget counter outlives its window by a day, so a late settle still lands on it."""
FINISHED_TTL_S = 86_400.0
"""How long a settled or released reservation is remembered, making a repeat a no-op."""
RATE_WIDTH_MS = 60_000


def to_micros(usd: float) -> int:
    if usd < 0:
        raise ValueError(f"an amount must not be negative: {usd}")
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    return micros / MICROS


@dataclass(frozen=True, slots=True)
class Counter:
    """A scope's spend counter for one calendar period, and when that period ends (epoch seconds)."""

    name: str
    ends_at: float


def counter_for(scope: BudgetScope, *, now: float) -> Counter:
    """The counter ``scope`` charges at ``now``: ``<subject>|<window>|<UTC day or month>``."""
    label, ends_at = _period(scope.window, now)
    return Counter(f"{scope.subject}|{scope.window}|{label}", ends_at)


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """One scope of a reservation: the counter it charges and its limit, in micro-dollars."""

    scope: BudgetScope
    counter: Counter
    limit: int


def budget_plan(scopes: list[BudgetScope], *, now: float) -> list[BudgetCharge]:
    """The counters a reservation holds on at ``now``; two scopes on one counter are a caller's mistake."""
    plan = [BudgetCharge(scope, counter_for(scope, now=now), to_micros(scope.limit_usd)) for scope in scopes]
    if len({item.counter.name for item in plan}) != len(plan):
        raise ValueError(f"two budget scopes share a subject and window: {scopes}")
    return plan


def new_hold(plan: list[BudgetCharge], amount: int, request_id: str, expires_at: float) -> Reservation:
    """A fresh reservation of ``amount`` micro-dollars on ``plan``'s counters, with an id of its own."""
    return Reservation(uuid.uuid4().hex, request_id, to_usd(amount), tuple(i.counter.name for i in plan), expires_at)


def refusal(item: BudgetCharge, spent: int, held: int) -> BudgetExceeded:
    return BudgetExceeded(item.scope, to_usd(max(0, item.limit - spent - held)), item.counter.ends_at)


def _period(window: Window, now: float) -> tuple[str, float]:
    # Days and months both turn at UTC midnight, so the UTC day number decides; the request path asks
    # this for every budget of every request.
    return _period_of_day(window, int(now // 86_400))


@functools.lru_cache(maxsize=64)
def _period_of_day(window: Window, day_number: int) -> tuple[str, float]:
    day = time.gmtime(day_number * 86_400)
    if window == "day":
        start = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", day), float(start + 86_400)
    year, month = (day.tm_year + 1, 1) if day.tm_mon == 12 else (day.tm_year, day.tm_mon + 1)
    return time.strftime("%Y-%m", day), float(calendar.timegm((year, month, 1, 0, 0, 0)))


@dataclass(frozen=True, slots=True)
class RateCounter:
    """One limit of one scope in the rate window: its counter name, limit and what this call costs."""

    scope: RateScope
    kind: Literal["requests", "tokens"]
    name: str
    limit: int
    cost: int


def rate_plan(scopes: list[RateScope], *, tokens: int, requests: int = 1) -> list[RateCounter]:
    """The limited counters a call touches; an unlimited kind is not counted at all."""
    if tokens < 0:
        raise ValueError(f"tokens must not be negative: {tokens}")
    plan = []
    for scope in scopes:
        if scope.requests_per_minute is not None and requests:
            plan.append(
                RateCounter(scope, "requests", f"{scope.subject}|requests", scope.requests_per_minute, requests)
            )
        if scope.tokens_per_minute is not None:
            plan.append(RateCounter(scope, "tokens", f"{scope.subject}|tokens", scope.tokens_per_minute, tokens))
    return plan


def fits(prev: int, cur: int, cost: int, limit: int, elapsed_ms: int, width_ms: int) -> bool:
    """Whether ``cost`` fits: the previous bucket weighted by its share still in the window, plus this one.

    Kept in integers (both sides times ``width_ms``) so Lua's doubles and
    Python agree exactly at the edge.
    """
    return prev * (width_ms - elapsed_ms) + (cur + cost) * width_ms <= limit * width_ms


def wait_ms(prev: int, cur: int, cost: int, limit: int, elapsed_ms: int, width_ms: int) -> int | None:
    """Milliseconds until ``cost`` fits if nothing else arrives: 0 if it fits now, ``None`` if it never will."""
    if cost > limit:
        return None
    if fits(prev, cur, cost, limit, elapsed_ms, width_ms):
        return 0
    if cur + cost <= limit:
        # It fits later in this bucket, once enough of the previous one has slid out (prev > 0 here).
        return -(-width_ms * (prev + cur + cost - limit) // prev) - elapsed_ms
    # Only in the next bucket, where this one becomes the previous (cur > 0 here).
    return width_ms - elapsed_ms - (-width_ms * (cur + cost - limit) // cur)


def decide(plan: list[RateCounter], counts: list[tuple[int, int]], elapsed_ms: int) -> RateDecision:
    """The decision for ``plan`` given each counter's (previous, current) bucket counts."""
    worst: tuple[int, RateCounter] | None = None
    for item, (prev, cur) in zip(plan, counts, strict=True):
        wait = wait_ms(prev, cur, item.cost, item.limit, elapsed_ms, RATE_WIDTH_MS)
        if wait is None:
            return RateDecision(False, None, item.scope, item.kind)
        if wait and (worst is None or wait > worst[0]):
            worst = (wait, item)
    if worst is None:
        return RateDecision(True)
    return RateDecision(False, worst[0] / 1000, worst[1].scope, worst[1].kind)


def bucket_of(now: float) -> tuple[int, int]:
    """The rate bucket ``now`` falls in, and how many milliseconds into it."""
    now_ms = round(now * 1000)
    return now_ms // RATE_WIDTH_MS, now_ms % RATE_WIDTH_MS
