"""The in-process store: the fake beside the contracts, for unit tests and a single gateway process.

It passes the same contract suite as SQLite and Redis, but nothing is
shared between processes and nothing survives a restart.

>>> import asyncio
>>> from router.state.base import BudgetScope
>>> state = MemoryState(clock=lambda: 0.0)
>>> scope = BudgetScope("tenant:acme", "day", limit_usd=1.0)
>>> hold = asyncio.run(state.budgets.reserve([scope], 0.4, request_id="req-1", ttl_s=60))
>>> asyncio.run(state.budgets.settle(hold, 0.25))
True
>>> asyncio.run(state.budgets.usage(scope)).remaining_usd
0.75
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.state.base import (
    Admitted,
    BudgetExceeded,
    BudgetScope,
    BudgetUsage,
    KeyLimits,
    KeyRecord,
    RateDecision,
    RateScope,
    Reservation,
)
from router.state.windows import (
    COUNTER_GRACE_S,
    FINISHED_TTL_S,
    BudgetCharge,
    RateCounter,
    bucket_of,
    budget_plan,
    counter_for,
    decide,
    new_hold,
    rate_plan,
    refusal,
    to_micros,
    to_usd,
)

__all__ = ["MemoryState"]

Clock = Callable[[], float]
SWEEP_EVERY_S = 5.0


@dataclass(slots=True)
class _Hold:
    amount: int
    charges: tuple[str, ...]
    expires_at: float


@dataclass(slots=True)
class _Counter:
    spent: int
    expires_at: float


class MemoryBudgets:
    """Budgets in dictionaries; one lock makes each call atomic, also across threads.

    Every read skips what has expired, so clearing it away (:meth:`_sweep`)
    is housekeeping, done every few seconds rather than on every call: a
    gateway that runs for a day remembers a day of finished reservations.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        self._holds: dict[str, _Hold] = {}
        self._holds_on: dict[str, dict[str, _Hold]] = {}  # counter name -> its holds by id
        self._finished: dict[str, float] = {}  # in the order finished, so expiring in that order too
        self._swept_at = -float("inf")

    async def reserve(
        self, scopes: list[BudgetScope], amount_usd: float, *, request_id: str, ttl_s: float
    ) -> Reservation | BudgetExceeded:
        now, amount = self._clock(), to_micros(amount_usd)
        plan = budget_plan(scopes, now=now)
        with self._lock:
            return self._check(plan, amount, now) or self._place(plan, amount, request_id, now + ttl_s)

    def _check(self, plan: list[BudgetCharge], amount: int, now: float) -> BudgetExceeded | None:
        """The first scope without room for ``amount`` (hold the lock)."""
        self._sweep(now)
        for item in plan:
            spent, held = self._spent_on(item.counter.name, now), self._held_on(item.counter.name, now)
            if spent + held + amount > item.limit:
                return refusal(item, spent, held)
        return None

    def _place(self, plan: list[BudgetCharge], amount: int, request_id: str, expires_at: float) -> Reservation:
        hold = new_hold(plan, amount, request_id, expires_at)
        entry = _Hold(amount, hold.charges, hold.expires_at)
        self._holds[hold.id] = entry
        for item in plan:
            self._counters.setdefault(item.counter.name, _Counter(0, item.counter.ends_at + COUNTER_GRACE_S))
            self._holds_on.setdefault(item.counter.name, {})[hold.id] = entry
        return hold

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        return self._finish(reservation, to_micros(actual_usd))

    async def release(self, reservation: Reservation) -> bool:
        return self._finish(reservation, 0)

    async def usage(self, scope: BudgetScope) -> BudgetUsage:
        now = self._clock()
        name = counter_for(scope, now=now).name
        with self._lock:
            return self._usage(scope, name, now)

    def _usage(self, scope: BudgetScope, name: str, now: float) -> BudgetUsage:
        self._sweep(now)
        return BudgetUsage(to_usd(self._spent_on(name, now)), to_usd(self._held_on(name, now)), scope.limit_usd)

    def _finish(self, reservation: Reservation, charge: int) -> bool:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            if self._finished.get(reservation.id, 0.0) > now:
                return False
            self._drop(reservation.id)
            for name in reservation.charges:
                # A counter past its window and grace is gone: nobody reads it any more.
                counter = self._counters.get(name)
                if counter is not None and counter.expires_at > now:
                    counter.spent += charge
            self._finished[reservation.id] = now + FINISHED_TTL_S
            return True

    def _spent_on(self, name: str, now: float) -> int:
        counter = self._counters.get(name)
        return 0 if counter is None or counter.expires_at <= now else counter.spent

    def _held_on(self, name: str, now: float) -> int:
        return sum(hold.amount for hold in self._holds_on.get(name, {}).values() if hold.expires_at > now)

    def _drop(self, hold_id: str) -> None:
        hold = self._holds.pop(hold_id, None)
        if hold is not None:
            for name in hold.charges:
                on = self._holds_on.get(name)
                if on is not None:
                    on.pop(hold_id, None)
                    if not on:
                        del self._holds_on[name]

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        for hold_id in [key for key, hold in self._holds.items() if hold.expires_at <= now]:
            self._drop(hold_id)
        self._counters = {key: counter for key, counter in self._counters.items() if counter.expires_at > now}
        while self._finished:
            oldest = next(iter(self._finished))
            if self._finished[oldest] > now:
                break
            del self._finished[oldest]


class MemoryRates:
    """Rate windows as a dictionary of (counter, minute) -> count."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, int], int] = {}

    async def acquire(self, scopes: list[RateScope], *, tokens: int) -> RateDecision:
        plan = rate_plan(scopes, tokens=tokens)
        bucket, elapsed = bucket_of(self._clock())
        with self._lock:
            decision = self._check(plan, bucket, elapsed)
            if decision.allowed:
                self._add([(c.name, c.cost) for c in plan], bucket)
            return decision

    def _check(self, plan: list[RateCounter], bucket: int, elapsed: int) -> RateDecision:
        counts = [(self._count(c.name, bucket - 1), self._count(c.name, bucket)) for c in plan]
        return decide(plan, counts, elapsed)

    async def record(self, scopes: list[RateScope], *, tokens: int) -> None:
        plan = rate_plan(scopes, tokens=tokens, requests=0)
        with self._lock:
            self._add([(c.name, c.cost) for c in plan], bucket_of(self._clock())[0])

    async def give_back(self, scopes: list[RateScope], *, requests: int, tokens: int, at: float) -> None:
        plan, bucket = rate_plan(scopes, tokens=tokens, requests=requests), bucket_of(at)[0]
        with self._lock:
            for item in plan:
                key = (item.name, bucket)
                if key in self._buckets:
                    self._buckets[key] = max(0, self._buckets[key] - item.cost)

    def _count(self, name: str, bucket: int) -> int:
        return self._buckets.get((name, bucket), 0)

    def _add(self, costs: list[tuple[str, int]], bucket: int) -> None:
        for name, cost in costs:
            self._buckets[(name, bucket)] = self._buckets.get((name, bucket), 0) + cost
        for key in [key for key in self._buckets if key[1] < bucket - 1]:
            del self._buckets[key]


class MemoryKeys:
    """Key records by hash."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}

    async def create(
        self,
        key_hash: str,
        *,
        tenant: str,
        label: str = "",
        limits: KeyLimits | None = None,
        allowed_targets: tuple[str, ...] | None = None,
    ) -> KeyRecord:
        record = KeyRecord(key_hash, tenant, label, limits or KeyLimits(), allowed_targets, self._clock())
        if self._records.setdefault(key_hash, record) is not record:
            raise ValueError(f"a key with hash {key_hash[:15]}… already exists")
        return record

    async def get(self, key_hash: str) -> KeyRecord | None:
        return self._records.get(key_hash)

    async def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        found = [r for r in self._records.values() if tenant is None or r.tenant == tenant]
        return sorted(found, key=lambda r: (r.created_at, r.key_hash))

    async def revoke(self, key_hash: str) -> bool:
        record = self._records.get(key_hash)
        if record is None or record.revoked:
            return False
        self._records[key_hash] = dataclasses.replace(record, revoked=True)
        return True


class MemoryKeyValues:
    """Values with an optional expiry."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._values: dict[str, tuple[str, float | None]] = {}

    async def get(self, key: str) -> str | None:
        value, expires_at = self._values.get(key, (None, None))
        if expires_at is not None and expires_at <= self._clock():
            self._values.pop(key, None)
            return None
        return value

    async def set(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        self._values[key] = (value, None if ttl_s is None else self._clock() + ttl_s)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)


class MemoryAdmissions:
    """Rate windows and budgets asked together, under both their locks."""

    def __init__(self, budgets: MemoryBudgets, rates: MemoryRates, clock: Clock) -> None:
        self._budgets = budgets
        self._rates = rates
        self._clock = clock

    async def admit(
        self,
        rates: list[RateScope],
        budgets: list[BudgetScope],
        *,
        tokens: int,
        amount_usd: float,
        request_id: str,
        ttl_s: float,
        requests: int = 1,
    ) -> Admitted:
        now, amount = self._clock(), to_micros(amount_usd)
        plan, charges = rate_plan(rates, tokens=tokens, requests=requests), budget_plan(budgets, now=now)
        bucket, elapsed = bucket_of(now)
        with self._budgets._lock, self._rates._lock:
            decision = self._rates._check(plan, bucket, elapsed)
            if not decision.allowed:
                return Admitted(decision)
            if not charges:
                self._rates._add([(c.name, c.cost) for c in plan], bucket)
                return Admitted(decision)
            refused = self._budgets._check(charges, amount, now)
            if refused is not None:
                return Admitted(decision, refused)
            self._rates._add([(c.name, c.cost) for c in plan], bucket)
            return Admitted(decision, self._budgets._place(charges, amount, request_id, now + ttl_s))

    async def complete(
        self,
        hold: Reservation | None,
        actual_usd: float,
        rates: list[RateScope],
        *,
        tokens: int,
        budgets: list[BudgetScope],
    ) -> list[BudgetUsage]:
        if hold is not None:
            self._budgets._finish(hold, to_micros(actual_usd))
        if tokens:
            await self._rates.record(rates, tokens=tokens)
        return [await self._budgets.usage(scope) for scope in budgets]


class MemoryState:
    """Budgets, rate windows, keys and values in this process; ``clock`` is epoch seconds (UTC windows)."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.budgets = MemoryBudgets(clock)
        self.rates = MemoryRates(clock)
        self.keys = MemoryKeys(clock)
        self.kv = MemoryKeyValues(clock)
        self.admissions = MemoryAdmissions(self.budgets, self.rates, clock)

    async def close(self) -> None:
        return None

    def dump(self) -> str:
        """Everything held, as text: what a test searches for a plain key."""
        return repr([vars(part) for part in (self.budgets, self.rates, self.keys, self.kv)])
