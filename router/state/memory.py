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
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from router.state.base import (
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
    bucket_of,
    budget_plan,
    counter_for,
    decide,
    rate_plan,
    refusal,
    to_micros,
    to_usd,
)

__all__ = ["MemoryState"]

Clock = Callable[[], float]


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
    """Budgets in dictionaries; one lock makes each call atomic, also across threads."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        self._holds: dict[str, _Hold] = {}
        self._finished: dict[str, float] = {}

    async def reserve(
        self, scopes: list[BudgetScope], amount_usd: float, *, request_id: str, ttl_s: float
    ) -> Reservation | BudgetExceeded:
        now, amount = self._clock(), to_micros(amount_usd)
        plan = budget_plan(scopes, now=now)
        with self._lock:
            self._sweep(now)
            for item in plan:
                spent, held = self._spent_on(item.counter.name), self._held_on(item.counter.name)
                if spent + held + amount > item.limit:
                    return refusal(item, spent, held)
            for item in plan:
                self._counters.setdefault(item.counter.name, _Counter(0, item.counter.ends_at + COUNTER_GRACE_S))
            charges = tuple(item.counter.name for item in plan)
            hold = Reservation(uuid.uuid4().hex, request_id, to_usd(amount), charges, now + ttl_s)
            self._holds[hold.id] = _Hold(amount, charges, hold.expires_at)
            return hold

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        return self._finish(reservation, to_micros(actual_usd))

    async def release(self, reservation: Reservation) -> bool:
        return self._finish(reservation, 0)

    async def usage(self, scope: BudgetScope) -> BudgetUsage:
        now = self._clock()
        name = counter_for(scope, now=now).name
        with self._lock:
            self._sweep(now)
            return BudgetUsage(to_usd(self._spent_on(name)), to_usd(self._held_on(name)), scope.limit_usd)

    def _finish(self, reservation: Reservation, charge: int) -> bool:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            if reservation.id in self._finished:
                return False
            self._holds.pop(reservation.id, None)
            for name in reservation.charges:
                # A counter past its window and grace is gone: nobody reads it any more.
                if name in self._counters:
                    self._counters[name].spent += charge
            self._finished[reservation.id] = now + FINISHED_TTL_S
            return True

    def _spent_on(self, name: str) -> int:
        counter = self._counters.get(name)
        return 0 if counter is None else counter.spent

    def _held_on(self, name: str) -> int:
        return sum(hold.amount for hold in self._holds.values() if name in hold.charges)

    def _sweep(self, now: float) -> None:
        self._holds = {key: hold for key, hold in self._holds.items() if hold.expires_at > now}
        self._counters = {key: counter for key, counter in self._counters.items() if counter.expires_at > now}
        self._finished = {key: until for key, until in self._finished.items() if until > now}


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
            counts = [(self._count(c.name, bucket - 1), self._count(c.name, bucket)) for c in plan]
            decision = decide(plan, counts, elapsed)
            if decision.allowed:
                self._add([(c.name, c.cost) for c in plan], bucket)
            return decision

    async def record(self, scopes: list[RateScope], *, tokens: int) -> None:
        plan = rate_plan(scopes, tokens=tokens, requests=0)
        with self._lock:
            self._add([(c.name, c.cost) for c in plan], bucket_of(self._clock())[0])

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


class MemoryState:
    """Budgets, rate windows, keys and values in this process; ``clock`` is epoch seconds (UTC windows)."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.budgets = MemoryBudgets(clock)
        self.rates = MemoryRates(clock)
        self.keys = MemoryKeys(clock)
        self.kv = MemoryKeyValues(clock)

    async def close(self) -> None:
        return None

    def dump(self) -> str:
        """Everything held, as text: what a test searches for a plain key."""
        return repr([vars(part) for part in (self.budgets, self.rates, self.keys, self.kv)])
