"""The state-store contract, run over the in-memory fake, SQLite and Redis (``tests/state/contract.py``).

Each case states one promise of :mod:`router.state.base`. The no-overshoot
cases race 50 reservations at a budget's edge in one event loop, over two
store objects, and across two OS processes sharing one SQLite file or one
Redis server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from asyncio.subprocess import PIPE

import pytest

from router.state import (
    BudgetExceeded,
    BudgetScope,
    KeyLimits,
    RateScope,
    Reservation,
    StateStore,
    Window,
)
from service.auth import hash_key
from tests.state.contract import START, FakeClock, Place, StoreKind
from tests.support.processes import ROOT

DAY = 86_400.0
MIDNIGHT = START + 3600  # 2026-04-01 00:00:00 UTC: a new day and a new month


def tenant(limit: float, window: Window = "day", name: str = "acme") -> BudgetScope:
    return BudgetScope(f"tenant:{name}", window, limit)


async def hold(store: StateStore, scopes: list[BudgetScope], amount: float, ttl_s: float = 60) -> Reservation:
    result = await store.budgets.reserve(scopes, amount, request_id="req", ttl_s=ttl_s)
    assert isinstance(result, Reservation), result
    return result


async def refused(store: StateStore, scopes: list[BudgetScope], amount: float) -> BudgetExceeded:
    result = await store.budgets.reserve(scopes, amount, request_id="req", ttl_s=60)
    assert isinstance(result, BudgetExceeded), result
    return result


# Budgets: reserve, settle, release


async def test_a_hold_counts_until_settled_at_the_real_cost(store: StateStore) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.4)
    assert reservation.amount_usd == 0.4
    usage = await store.budgets.usage(scope)
    assert (usage.spent_usd, usage.held_usd, usage.remaining_usd) == (0.0, 0.4, 0.6)

    assert await store.budgets.settle(reservation, 0.25) is True

    usage = await store.budgets.usage(scope)
    assert (usage.spent_usd, usage.held_usd, usage.remaining_usd) == (0.25, 0.0, 0.75)


async def test_release_drops_the_hold_without_charging(store: StateStore) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.9)
    await refused(store, [scope], 0.2)

    assert await store.budgets.release(reservation) is True

    assert (await store.budgets.usage(scope)).remaining_usd == 1.0
    await hold(store, [scope], 1.0)


async def test_settling_or_releasing_again_does_nothing(store: StateStore) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.3)
    assert await store.budgets.settle(reservation, 0.3) is True

    assert await store.budgets.settle(reservation, 0.3) is False
    assert await store.budgets.release(reservation) is False
    assert (await store.budgets.usage(scope)).spent_usd == 0.3


async def test_a_refusal_names_the_scope_what_is_left_and_when_it_resets(store: StateStore) -> None:
    scope = tenant(1.0)
    await hold(store, [scope], 0.7)

    exceeded = await refused(store, [scope], 0.4)

    assert exceeded.scope == scope
    assert exceeded.remaining_usd == pytest.approx(0.3)
    assert exceeded.resets_at == MIDNIGHT


async def test_a_budget_can_be_used_to_the_last_micro_dollar(store: StateStore) -> None:
    scope = tenant(1.0)
    await hold(store, [scope], 0.999999)
    await hold(store, [scope], 0.000001)
    await refused(store, [scope], 0.000001)
    assert (await store.budgets.usage(scope)).remaining_usd == 0.0


async def test_a_reservation_is_all_or_nothing_across_scopes(store: StateStore) -> None:
    key = BudgetScope("key:a", "day", 10.0)
    acme = tenant(1.0)
    await hold(store, [acme], 0.8)  # another key of the tenant

    exceeded = await refused(store, [key, acme], 0.5)

    assert exceeded.scope == acme
    assert (await store.budgets.usage(key)).held_usd == 0.0
    both = await hold(store, [key, acme], 0.2)
    assert (await store.budgets.usage(key)).held_usd == 0.2
    await store.budgets.settle(both, 0.1)
    assert (await store.budgets.usage(key)).spent_usd == 0.1
    assert (await store.budgets.usage(acme)).spent_usd == 0.1


async def test_the_real_cost_is_charged_even_above_the_estimate(store: StateStore) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.1)
    await store.budgets.settle(reservation, 0.95)

    assert (await store.budgets.usage(scope)).spent_usd == 0.95
    await refused(store, [scope], 0.1)


async def test_amounts_and_scopes_are_checked(store: StateStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.budgets.reserve([tenant(1.0)], -0.1, request_id="req", ttl_s=60)
    with pytest.raises(ValueError, match="share a subject and window"):
        await store.budgets.reserve([tenant(1.0), tenant(2.0)], 0.1, request_id="req", ttl_s=60)
    assert isinstance(await store.budgets.reserve([], 5.0, request_id="req", ttl_s=60), Reservation)


# Budgets: day and month windows


async def test_a_day_budget_resets_at_utc_midnight_and_a_month_budget_does_not(
    store: StateStore, clock: FakeClock
) -> None:
    day, month = tenant(1.0, "day"), tenant(1.5, "month")
    clock.now = MIDNIGHT - DAY + 60  # 2026-03-31 00:01, so the month's spend is on March too
    await store.budgets.settle(await hold(store, [day, month], 1.0), 1.0)
    clock.now = MIDNIGHT - 1
    assert (await refused(store, [day, month], 0.1)).scope == day

    clock.now = MIDNIGHT + 1  # 2026-04-01 00:00:01: a new day and a new month
    await hold(store, [day, month], 0.6)
    assert (await store.budgets.usage(day)).remaining_usd == 0.4


async def test_a_month_budget_carries_over_days_until_the_month_ends(store: StateStore, clock: FakeClock) -> None:
    day, month = tenant(1.0, "day"), tenant(1.5, "month")
    clock.now = MIDNIGHT + 60  # 2026-04-01
    await store.budgets.settle(await hold(store, [day, month], 1.0), 1.0)
    clock.now = MIDNIGHT + DAY + 60  # 2026-04-02: the day budget is fresh, the month's is not

    exceeded = await refused(store, [day, month], 0.6)

    assert exceeded.scope == month
    assert exceeded.remaining_usd == pytest.approx(0.5)
    assert exceeded.resets_at == MIDNIGHT + 30 * DAY  # 2026-05-01
    clock.now = MIDNIGHT + 30 * DAY + 60
    await hold(store, [day, month], 1.0)


async def test_a_request_running_past_midnight_is_charged_to_the_day_it_started(
    store: StateStore, clock: FakeClock
) -> None:
    scope = tenant(1.0)
    clock.now = MIDNIGHT - 30
    reservation = await hold(store, [scope], 0.5, ttl_s=600)
    clock.now = MIDNIGHT + 30

    await store.budgets.settle(reservation, 0.5)

    assert (await store.budgets.usage(scope)).spent_usd == 0.0
    clock.now = MIDNIGHT - 10
    assert (await store.budgets.usage(scope)).spent_usd == 0.5


# Budgets: abandoned holds


async def test_an_abandoned_hold_frees_itself_after_its_ttl(store: StateStore, clock: FakeClock) -> None:
    scope = tenant(1.0)
    await hold(store, [scope], 1.0, ttl_s=30)
    clock.advance(29)
    await refused(store, [scope], 0.1)

    clock.advance(1)

    assert (await store.budgets.usage(scope)).held_usd == 0.0
    await hold(store, [scope], 1.0)


async def test_a_settle_after_the_hold_expired_still_charges_once(store: StateStore, clock: FakeClock) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.2, ttl_s=30)
    clock.advance(31)
    await hold(store, [scope], 0.1)  # sweeps the expired hold

    assert await store.budgets.settle(reservation, 0.4) is True
    assert await store.budgets.settle(reservation, 0.4) is False

    usage = await store.budgets.usage(scope)
    assert (usage.spent_usd, usage.held_usd) == (0.4, 0.1)


async def test_a_release_after_the_hold_expired_charges_nothing(store: StateStore, clock: FakeClock) -> None:
    scope = tenant(1.0)
    reservation = await hold(store, [scope], 0.2, ttl_s=30)
    clock.advance(31)

    assert await store.budgets.release(reservation) is True
    assert (await store.budgets.usage(scope)).spent_usd == 0.0


# Budgets: no overshoot


async def test_50_concurrent_reservations_at_the_edge_never_overshoot(store: StateStore) -> None:
    scope = tenant(1.0)
    await store.budgets.settle(await hold(store, [scope], 0.5), 0.5)

    results = await asyncio.gather(
        *(store.budgets.reserve([scope], 0.03, request_id=f"r{i}", ttl_s=60) for i in range(50))
    )

    granted = [r for r in results if isinstance(r, Reservation)]
    assert len(granted) == 16  # 16 x 0.03 = 0.48 fits in 0.5; a 17th would not
    usage = await store.budgets.usage(scope)
    assert usage.spent_usd + usage.held_usd == pytest.approx(0.98)
    await asyncio.gather(*(store.budgets.settle(r, r.amount_usd) for r in granted))
    assert (await store.budgets.usage(scope)).spent_usd == pytest.approx(0.98)


async def test_two_store_objects_on_one_backend_never_overshoot(
    shared_kind: StoreKind, shared_place: Place, clock: FakeClock
) -> None:
    first, second = shared_kind.open(shared_place, clock), shared_kind.open(shared_place, clock)
    scope = tenant(1.0)
    try:
        results = await asyncio.gather(
            *(
                (first if i % 2 else second).budgets.reserve([scope], 0.07, request_id=f"r{i}", ttl_s=60)
                for i in range(50)
            )
        )
        assert sum(isinstance(r, Reservation) for r in results) == 14  # 14 x 0.07 = 0.98
        assert (await second.budgets.usage(scope)).held_usd == pytest.approx(0.98)
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow
async def test_two_processes_with_50_reservations_each_never_overshoot(
    shared_kind: StoreKind, shared_place: Place
) -> None:
    assert shared_place.url is not None
    limit, amount, subject = 1.0, 0.03, "tenant:race"
    observer = shared_kind.open(shared_place, time.time)
    scope = BudgetScope(subject, "month", limit)
    try:
        await observer.budgets.settle(await hold(observer, [scope], 0.5), 0.5)  # creates the file, at the edge
        start_at = time.time() + 3.0
        args = [shared_place.url, shared_place.namespace, subject, str(limit), str(amount), "50", str(start_at)]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.state.hammer", *args, cwd=ROOT, stdout=PIPE, stderr=PIPE
            )
            for _ in range(2)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), timeout=120)
        for worker, (_, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err.decode()
        granted = [json.loads(out)["granted"] for out, _ in outputs]

        assert sum(granted) == 16  # 0.5 left, 0.03 each: 16 fit, 84 of the 100 are refused
        usage = await observer.budgets.usage(scope)
        assert usage.held_usd == 0.0
        assert usage.spent_usd == pytest.approx(0.98)
        assert usage.spent_usd <= limit
    finally:
        await observer.close()


# Rate windows


def rpm(limit: int, subject: str = "key:a") -> RateScope:
    return RateScope(subject, requests_per_minute=limit)


async def test_requests_past_the_limit_are_refused_with_a_retry_after_that_holds(
    store: StateStore, clock: FakeClock
) -> None:
    scope = rpm(3)
    for _ in range(3):
        assert (await store.rates.acquire([scope], tokens=0)).allowed

    decision = await store.rates.acquire([scope], tokens=0)

    assert (decision.allowed, decision.scope, decision.kind) == (False, scope, "requests")
    # The three move to the previous minute, whose weight must fall to 2/3: 60 s + 20 s.
    assert decision.retry_after_s == 80.0
    clock.advance(79)
    assert not (await store.rates.acquire([scope], tokens=0)).allowed
    clock.advance(1)
    assert (await store.rates.acquire([scope], tokens=0)).allowed


async def test_the_previous_minute_counts_by_the_share_still_in_the_window(store: StateStore, clock: FakeClock) -> None:
    scope = rpm(10)
    for _ in range(10):
        assert (await store.rates.acquire([scope], tokens=0)).allowed
    clock.advance(90)  # half-way through the next minute: the 10 weigh 5

    admitted = [(await store.rates.acquire([scope], tokens=0)).allowed for _ in range(6)]

    assert admitted == [True] * 5 + [False]


async def test_tokens_per_minute_count_the_estimate_then_what_was_learnt(store: StateStore) -> None:
    scope = RateScope("tenant:acme", tokens_per_minute=1000)
    assert (await store.rates.acquire([scope], tokens=600)).allowed
    refusal = await store.rates.acquire([scope], tokens=500)
    assert (refusal.allowed, refusal.kind) == (False, "tokens")
    assert refusal.retry_after_s is not None and refusal.retry_after_s > 0

    assert (await store.rates.acquire([scope], tokens=400)).allowed
    await store.rates.record([scope], tokens=50)  # the completion, never refused

    assert not (await store.rates.acquire([scope], tokens=0)).allowed


async def test_a_lease_counts_many_requests_at_once_and_gives_back_what_it_did_not_use(
    store: StateStore, clock: FakeClock
) -> None:
    scope = RateScope("tenant:acme", requests_per_minute=10, tokens_per_minute=1000)
    leased_at = clock()
    lease = await store.admissions.admit(
        [scope], [], tokens=600, amount_usd=0.0, request_id="lease", ttl_s=60, requests=8
    )  # fmt: skip
    assert lease.ok
    # 10 - 8 = 2 left.
    assert [(await store.rates.acquire([scope], tokens=0)).allowed for _ in range(3)] == [True, True, False]

    clock.advance(5)
    await store.rates.give_back([scope], requests=5, tokens=500, at=leased_at)  # 3 slots and 100 tokens used

    admitted = [(await store.rates.acquire([scope], tokens=100)).allowed for _ in range(6)]
    assert admitted == [True] * 5 + [False]  # 10 - 3 - 2 (acquired above) = 5
    # Never below zero: giving back more than was counted leaves nothing negative to admit against.
    await store.rates.give_back([scope], requests=100, tokens=10_000, at=leased_at)
    assert [(await store.rates.acquire([scope], tokens=0)).allowed for _ in range(11)] == [True] * 10 + [False]


async def test_giving_back_to_a_minute_gone_by_changes_nothing_now(store: StateStore, clock: FakeClock) -> None:
    scope = rpm(4)
    then = clock()
    assert (await store.admissions.admit([scope], [], tokens=0, amount_usd=0, request_id="l", ttl_s=60, requests=4)).ok
    clock.advance(60)  # the 4 are now the previous minute, still weighing 4
    await store.rates.give_back([scope], requests=0, tokens=0, at=then)
    assert not (await store.rates.acquire([scope], tokens=0)).allowed
    clock.advance(120)  # long gone: giving back to it must not make a bucket of its own
    await store.rates.give_back([scope], requests=4, tokens=0, at=then)
    assert [(await store.rates.acquire([scope], tokens=0)).allowed for _ in range(5)] == [True] * 4 + [False]


async def test_a_request_larger_than_the_limit_is_refused_for_good(store: StateStore) -> None:
    decision = await store.rates.acquire([RateScope("key:a", tokens_per_minute=100)], tokens=101)
    assert (decision.allowed, decision.retry_after_s, decision.kind) == (False, None, "tokens")


async def test_a_rate_refusal_counts_nothing_anywhere(store: StateStore) -> None:
    key, acme = rpm(2, "key:a"), rpm(1, "tenant:acme")
    assert (await store.rates.acquire([key, acme], tokens=0)).allowed

    decision = await store.rates.acquire([key, acme], tokens=0)

    assert (decision.allowed, decision.scope) == (False, acme)
    assert (await store.rates.acquire([key], tokens=0)).allowed  # the key's count is 1, not 2
    assert not (await store.rates.acquire([key], tokens=0)).allowed


async def test_retry_after_is_the_longest_wait_of_the_refusing_limits(store: StateStore) -> None:
    key, acme = rpm(3, "key:a"), rpm(1, "tenant:acme")
    assert (await store.rates.acquire([key, acme], tokens=0)).allowed
    for _ in range(2):
        assert (await store.rates.acquire([key], tokens=0)).allowed

    decision = await store.rates.acquire([key, acme], tokens=0)

    # Both wait for the next minute; the key's 3 must then weigh 2 (20 s more), the tenant's 1 weigh 0 (60 s more).
    assert (decision.allowed, decision.scope, decision.retry_after_s) == (False, acme, 120.0)


async def test_unlimited_scopes_are_always_admitted(store: StateStore) -> None:
    decision = await store.rates.acquire([RateScope("key:a")], tokens=10**9)
    assert decision.allowed
    await store.rates.record([RateScope("key:a")], tokens=10**9)


async def test_50_concurrent_acquires_admit_exactly_the_limit(store: StateStore) -> None:
    scope = RateScope("tenant:acme", requests_per_minute=20, tokens_per_minute=10_000)
    decisions = await asyncio.gather(*(store.rates.acquire([scope], tokens=100) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 20


# Admissions: the rate count and the hold in one call, the completion in another


async def test_admit_counts_the_request_and_places_the_hold_together(store: StateStore) -> None:
    rate, budget = rpm(2), tenant(1.0)

    admitted = await store.admissions.admit([rate], [budget], tokens=0, amount_usd=0.4, request_id="r", ttl_s=60)

    assert admitted.ok and isinstance(admitted.hold, Reservation)
    assert admitted.hold.amount_usd == 0.4
    assert (await store.budgets.usage(budget)).held_usd == 0.4
    assert (await store.rates.acquire([rate], tokens=0)).allowed
    assert not (await store.rates.acquire([rate], tokens=0)).allowed  # the admit counted one of the two


async def test_admit_is_both_or_neither(store: StateStore) -> None:
    rate, budget = rpm(5), tenant(1.0)
    await hold(store, [budget], 0.9)

    short = await store.admissions.admit([rate], [budget], tokens=0, amount_usd=0.2, request_id="r", ttl_s=60)

    assert not short.ok and short.rate.allowed
    assert isinstance(short.hold, BudgetExceeded) and short.hold.scope == budget
    for _ in range(5):  # the refused request counted nothing against the rate limit
        assert (await store.rates.acquire([rate], tokens=0)).allowed

    limited = await store.admissions.admit([rate], [budget], tokens=0, amount_usd=0.05, request_id="r", ttl_s=60)

    assert not limited.ok and (limited.rate.allowed, limited.rate.scope, limited.hold) == (False, rate, None)
    assert (await store.budgets.usage(budget)).held_usd == 0.9  # and held nothing


async def test_admit_without_budgets_only_counts(store: StateStore) -> None:
    rate = RateScope("tenant:acme", tokens_per_minute=100)
    first = await store.admissions.admit([rate], [], tokens=60, amount_usd=0.0, request_id="r", ttl_s=60)
    second = await store.admissions.admit([rate], [], tokens=60, amount_usd=0.0, request_id="r", ttl_s=60)
    assert (first.ok, first.hold) == (True, None)
    assert (second.ok, second.rate.kind) == (False, "tokens")
    nothing = await store.admissions.admit([], [], tokens=10**6, amount_usd=0.0, request_id="r", ttl_s=60)
    assert nothing.ok


async def test_complete_settles_counts_the_late_tokens_and_reads_what_is_left(store: StateStore) -> None:
    rate, day, month = RateScope("tenant:acme", tokens_per_minute=100), tenant(1.0), tenant(10.0, "month")
    admitted = await store.admissions.admit([rate], [day, month], tokens=40, amount_usd=0.5, request_id="r", ttl_s=60)
    assert isinstance(admitted.hold, Reservation)

    left = await store.admissions.complete(admitted.hold, 0.125, [rate], tokens=50, budgets=[day, month])

    assert [(u.spent_usd, u.held_usd, u.remaining_usd) for u in left] == [(0.125, 0.0, 0.875), (0.125, 0.0, 9.875)]
    assert not (await store.rates.acquire([rate], tokens=11)).allowed  # 40 + 50 counted
    assert await store.budgets.settle(admitted.hold, 0.125) is False  # completed once
    released = await store.admissions.admit([], [day], tokens=0, amount_usd=0.5, request_id="r", ttl_s=60)
    assert isinstance(released.hold, Reservation)
    left = await store.admissions.complete(released.hold, 0.0, [], tokens=0, budgets=[day])
    assert (left[0].spent_usd, left[0].held_usd) == (0.125, 0.0)


async def test_50_concurrent_admissions_at_the_edge_never_overshoot(store: StateStore) -> None:
    budget, rate = tenant(1.0), RateScope("tenant:acme", requests_per_minute=30)
    admitted = await asyncio.gather(*(
        store.admissions.admit([rate], [budget], tokens=0, amount_usd=0.03, request_id=f"r{i}", ttl_s=60)
        for i in range(50)
    ))  # fmt: skip
    held = [a.hold for a in admitted if a.ok]
    assert len(held) == 30  # the rate limit binds first: 30 x $0.03 fits in $1
    assert (await store.budgets.usage(budget)).held_usd == pytest.approx(0.9)
    more = await asyncio.gather(*(
        store.admissions.admit([], [budget], tokens=0, amount_usd=0.03, request_id=f"s{i}", ttl_s=60)
        for i in range(50)
    ))  # fmt: skip
    assert sum(a.ok for a in more) == 3
    assert (await store.budgets.usage(budget)).remaining_usd == pytest.approx(0.01)


# Client keys


async def test_keys_are_created_listed_and_revoked(store: StateStore, clock: FakeClock) -> None:
    first, second, other = hash_key("sk-first"), hash_key("sk-second"), hash_key("sk-other")
    limits = KeyLimits(requests_per_minute=60, usd_per_day=5.0)
    created = await store.keys.create(first, tenant="acme", label="ci", limits=limits, allowed_targets=("edge",))
    clock.advance(1)
    await store.keys.create(second, tenant="acme")
    await store.keys.create(other, tenant="globex")

    assert await store.keys.get(first) == created
    assert (created.created_at, created.limits, created.allowed_targets, created.revoked) == (
        START,
        limits,
        ("edge",),
        False,
    )
    assert [r.key_hash for r in await store.keys.list("acme")] == [first, second]
    assert len(await store.keys.list()) == 3
    assert await store.keys.get(hash_key("sk-unknown")) is None

    assert await store.keys.revoke(first) is True
    assert await store.keys.revoke(first) is False
    assert await store.keys.revoke(hash_key("sk-unknown")) is False
    revoked = await store.keys.get(first)
    assert revoked is not None and revoked.revoked and revoked.limits == limits


async def test_a_key_hash_is_stored_once(store: StateStore) -> None:
    await store.keys.create(hash_key("sk-first"), tenant="acme")
    with pytest.raises(ValueError, match="already exists"):
        await store.keys.create(hash_key("sk-first"), tenant="globex")
    assert (await store.keys.get(hash_key("sk-first"))).tenant == "acme"  # type: ignore[union-attr]


async def test_the_store_keeps_only_the_hash_of_a_key(kind: StoreKind, place: Place, store: StateStore) -> None:
    plain = "sk-hybrid-router-plain-secret-0123456789"
    with pytest.raises(ValueError, match="never keeps a plain key"):
        await store.keys.create(plain, tenant="acme")
    await store.keys.create(hash_key(plain), tenant="acme", label="app")

    dumped = await kind.dump(place, store)

    assert hash_key(plain) in dumped
    assert plain not in dumped


# Values


async def test_values_are_set_read_replaced_and_deleted(store: StateStore) -> None:
    assert await store.kv.get("circuit:cloud") is None
    await store.kv.set("circuit:cloud", "open")
    await store.kv.set("circuit:cloud", "closed")
    assert await store.kv.get("circuit:cloud") == "closed"

    await store.kv.delete("circuit:cloud")
    await store.kv.delete("circuit:cloud")

    assert await store.kv.get("circuit:cloud") is None


async def test_values_expire_after_their_ttl(store: StateStore, clock: FakeClock) -> None:
    await store.kv.set("session:abc", "cloud", ttl_s=10)
    clock.advance(9)
    assert await store.kv.get("session:abc") == "cloud"
    clock.advance(1)
    assert await store.kv.get("session:abc") is None

    await store.kv.set("session:abc", "edge", ttl_s=10)
    await store.kv.set("session:abc", "edge")  # no ttl: kept
    clock.advance(3600)
    assert await store.kv.get("session:abc") == "edge"


# Shared stores: what one process writes, another reads


async def test_another_store_object_sees_the_same_state(
    shared_kind: StoreKind, shared_place: Place, clock: FakeClock
) -> None:
    first = shared_kind.open(shared_place, clock)
    scope = tenant(1.0)
    try:
        reservation = await hold(first, [scope], 0.4)
        await first.keys.create(hash_key("sk-first"), tenant="acme")
        await first.kv.set("circuit:cloud", "open", ttl_s=30)
        assert (await first.rates.acquire([rpm(1)], tokens=0)).allowed
    finally:
        await first.close()

    second = shared_kind.open(shared_place, clock)
    try:
        assert (await second.budgets.usage(scope)).held_usd == 0.4
        assert await second.budgets.settle(reservation, 0.3) is True
        assert (await second.budgets.usage(scope)).spent_usd == 0.3
        assert [r.tenant for r in await second.keys.list()] == ["acme"]
        assert await second.kv.get("circuit:cloud") == "open"
        assert not (await second.rates.acquire([rpm(1)], tokens=0)).allowed
    finally:
        await second.close()
