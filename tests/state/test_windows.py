"""The arithmetic every store shares: budget periods and the sliding rate window's waits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.state import BudgetScope, RateScope
from router.state.windows import RATE_WIDTH_MS, bucket_of, budget_plan, counter_for, fits, rate_plan, to_micros, wait_ms

W = RATE_WIDTH_MS


def later(prev: int, cur: int, elapsed: int, wait: int) -> tuple[int, int, int]:
    """The (previous, current, elapsed) a counter shows ``wait`` ms on, when nothing else arrives."""
    moved = elapsed + wait
    if moved < W:
        return prev, cur, moved
    if moved < 2 * W:
        return cur, 0, moved - W
    return 0, 0, moved % W


@given(
    prev=st.integers(0, 1000),
    cur=st.integers(0, 1000),
    cost=st.integers(0, 1000),
    limit=st.integers(0, 1000),
    elapsed=st.integers(0, W - 1),
)
def test_the_wait_is_the_first_moment_the_cost_fits(prev: int, cur: int, cost: int, limit: int, elapsed: int) -> None:
    wait = wait_ms(prev, cur, cost, limit, elapsed, W)
    if wait is None:
        assert cost > limit
        return
    assert wait >= 0
    assert fits(*later(prev, cur, elapsed, wait)[:2], cost, limit, later(prev, cur, elapsed, wait)[2], W)
    if wait > 0:
        before = later(prev, cur, elapsed, wait - 1)
        assert not fits(before[0], before[1], cost, limit, before[2], W)


def test_budget_periods_are_utc_days_and_months() -> None:
    new_year = 1_798_761_600.0  # 2027-01-01 00:00:00 UTC
    assert counter_for(BudgetScope("key:a", "day", 1), now=new_year - 1).name == "key:a|day|2026-12-31"
    assert counter_for(BudgetScope("key:a", "day", 1), now=new_year).name == "key:a|day|2027-01-01"
    december = counter_for(BudgetScope("key:a", "month", 1), now=new_year - 1)
    assert (december.name, december.ends_at) == ("key:a|month|2026-12", new_year)


def test_scopes_and_amounts_are_checked() -> None:
    with pytest.raises(ValueError, match="free of"):
        BudgetScope("key|a", "day", 1.0)
    with pytest.raises(ValueError, match="negative"):
        BudgetScope("key:a", "day", -1.0)
    with pytest.raises(ValueError, match="negative"):
        to_micros(-0.01)
    with pytest.raises(ValueError, match="share"):
        budget_plan([BudgetScope("key:a", "day", 1.0), BudgetScope("key:a", "day", 2.0)], now=0.0)
    assert to_micros(0.1 + 0.2) == 300_000


def test_a_rate_plan_counts_only_limited_kinds() -> None:
    plan = rate_plan([RateScope("key:a", requests_per_minute=5), RateScope("tenant:t", tokens_per_minute=9)], tokens=3)
    assert [(c.name, c.limit, c.cost) for c in plan] == [("key:a|requests", 5, 1), ("tenant:t|tokens", 9, 3)]
    assert rate_plan([RateScope("key:a", requests_per_minute=5)], tokens=3, requests=0) == []
    assert bucket_of(120.5) == (2, 500)
