"""Admission leases (router/state/leases.py) over every store: fewer store calls, the same promises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.state import Admissions, Admitted, BudgetScope, RateScope, Reservation, StateStore
from router.state.leases import LeasedAdmissions
from tests.state.contract import FakeClock

RATE = RateScope("tenant:acme", requests_per_minute=1000, tokens_per_minute=1_000_000)
DAY = BudgetScope("tenant:acme", "day", 10.0)


class CountingAdmissions:
    """The store's admissions, counting the calls that reach it."""

    def __init__(self, inner: Admissions) -> None:
        self.inner = inner
        self.admits = 0
        self.completes = 0

    async def admit(self, *args: Any, **kwargs: Any) -> Admitted:
        self.admits += 1
        return await self.inner.admit(*args, **kwargs)

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        self.completes += 1
        return await self.inner.complete(*args, **kwargs)


def leased(store: StateStore, clock: FakeClock, **options: Any) -> tuple[LeasedAdmissions, CountingAdmissions]:
    counting = CountingAdmissions(store.admissions)
    return LeasedAdmissions(counting, store.rates, clock=clock, **options), counting


async def settle_background(admissions: LeasedAdmissions) -> None:
    await admissions.taken()


async def one(
    admissions: LeasedAdmissions, *, rates: list[RateScope], budgets: list[BudgetScope], usd: float, cost: float
) -> bool:
    admitted = await admissions.admit(rates, budgets, tokens=10, amount_usd=usd, request_id="r", ttl_s=60)
    if not admitted.ok:
        return False
    hold = admitted.hold if isinstance(admitted.hold, Reservation) else None
    await admissions.complete(hold, cost, rates, tokens=5, budgets=budgets)
    return True


async def test_a_busy_client_is_admitted_from_a_lease_without_asking_the_store(
    store: StateStore, clock: FakeClock
) -> None:
    admissions, counting = leased(store, clock)
    for _ in range(50):
        assert await one(admissions, rates=[RATE], budgets=[DAY], usd=0.01, cost=0.004)
        await settle_background(admissions)
        clock.advance(0.001)
    # Two at the store make it busy; then one lease call, and the lease's 50 slots cover the rest.
    assert counting.admits <= 4
    await admissions.close()
    usage = await store.budgets.usage(DAY)
    # What the requests really cost reached the store, and nothing is held once the lease retired.
    assert (round(usage.spent_usd, 6), usage.held_usd) == (0.2, 0.0)


async def test_a_quiet_client_always_goes_to_the_store(store: StateStore, clock: FakeClock) -> None:
    admissions, counting = leased(store, clock)
    for _ in range(5):
        assert await one(admissions, rates=[RATE], budgets=[DAY], usd=0.01, cost=0.004)
        await settle_background(admissions)
        clock.advance(2.0)  # longer than a lease's life between requests
    assert (counting.admits, admissions.leases) == (5, 0)


async def test_two_replicas_with_leases_never_overshoot_a_budget(store: StateStore, clock: FakeClock) -> None:
    budget = BudgetScope("tenant:acme", "day", 1.0)
    first, _ = leased(store, clock, fraction=0.5)
    second, _ = leased(store, clock, fraction=0.5)

    async def replica(admissions: LeasedAdmissions) -> int:
        served = 0
        for _ in range(100):
            served += await one(admissions, rates=[], budgets=[budget], usd=0.01, cost=0.01)
            await settle_background(admissions)
        return served

    served = await asyncio.gather(replica(first), replica(second))
    await first.close()
    await second.close()
    usage = await store.budgets.usage(budget)
    assert usage.spent_usd <= 1.0 and usage.held_usd == 0.0
    assert round(usage.spent_usd, 6) == round(sum(served) * 0.01, 6)
    # Leases hold back a little near the edge, never much: at most a lease's worth unspent.
    assert usage.spent_usd >= 0.5


async def test_two_replicas_with_leases_stay_within_a_rate_limit(store: StateStore, clock: FakeClock) -> None:
    limit = RateScope("tenant:acme", requests_per_minute=100)
    first, _ = leased(store, clock, fraction=0.1)
    second, _ = leased(store, clock, fraction=0.1)
    admitted = 0
    for i in range(300):
        admissions = first if i % 2 else second
        admitted += await one(admissions, rates=[limit], budgets=[], usd=0.0, cost=0.0)
        await settle_background(admissions)
        clock.advance(0.01)
    assert 90 <= admitted <= 100
    await first.close()
    await second.close()


async def test_slots_a_lease_did_not_use_go_back(store: StateStore, clock: FakeClock) -> None:
    limit = RateScope("tenant:acme", requests_per_minute=100)
    first, counting = leased(store, clock, fraction=0.2)
    for _ in range(23):
        assert await one(first, rates=[limit], budgets=[], usd=0.0, cost=0.0)
        await settle_background(first)
        clock.advance(0.01)
    assert counting.admits < 23  # leased: slots counted ahead, more than were used
    await first.close()
    # The store counts exactly the 23 requests that ran; the rest of the minute is there for whoever asks.
    after = [(await store.rates.acquire([limit], tokens=0)).allowed for _ in range(78)]
    assert after == [True] * 77 + [False]


async def test_a_lease_never_outlives_the_minute_it_was_counted_in(store: StateStore, clock: FakeClock) -> None:
    clock.now = (clock.now // 60 + 1) * 60 - 0.3  # 0.3 s before the minute ends
    admissions, _ = leased(store, clock)
    for _ in range(3):
        assert await one(admissions, rates=[RATE], budgets=[], usd=0.0, cost=0.0)
        await settle_background(admissions)
    assert admissions.leases == 1
    clock.advance(0.4)  # into the next minute: the lease is over although its second has not passed
    admitted = await admissions.admit([RATE], [], tokens=10, amount_usd=0.0, request_id="r", ttl_s=60)
    # Admitted by the store itself (a leased request carries a local hold for its lease).
    assert admitted.ok and admitted.hold is None
    await admissions.close()


@pytest.mark.parametrize("fraction", [0.0, 0.6])
def test_a_lease_is_a_share_of_a_limit(fraction: float, clock: FakeClock) -> None:
    from router.state.memory import MemoryState

    store = MemoryState(clock=clock)
    with pytest.raises(ValueError, match="fraction"):
        LeasedAdmissions(store.admissions, store.rates, fraction=fraction)
