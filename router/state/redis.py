"""The store for many gateway replicas: one Redis server (or a primary with replicas; not Cluster).

Reservations, settlements and rate windows are Lua scripts
(:mod:`router.state.redis_lua`): Redis runs one at a time, so a check and its
write cannot interleave with another replica's. Every key starts with
``<namespace>:``. Times come from the caller's clock, like the other stores,
so replicas' clocks must agree to within a second or so (NTP); Redis's own
expiry only clears away what nothing reads any more.

The ``redis`` package is optional: ``pip install 'hybrid-router[redis]'``.
Building a :class:`RedisState` does no I/O; the first call connects.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from router.errors import StateUnavailable
from router.state import redis_lua
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
from router.state.records import key_from_json, key_to_json
from router.state.windows import (
    COUNTER_GRACE_S,
    FINISHED_TTL_S,
    RATE_WIDTH_MS,
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

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisState"]

Clock = Callable[[], float]
INSTALL_HINT = "the Redis state store needs the redis package: pip install 'hybrid-router[redis]'"


def _import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return redis


class _Connection:
    """The client, the scripts and the key names, shared by the four parts."""

    def __init__(self, client: Redis, namespace: str, errors: type[Exception], location: str) -> None:
        self.client = client
        self.namespace = namespace
        self._errors = errors
        self._location = location
        self.reserve = client.register_script(redis_lua.RESERVE)
        self.finish = client.register_script(redis_lua.FINISH)
        self.usage = client.register_script(redis_lua.USAGE)
        self.rate = client.register_script(redis_lua.RATE)
        self.swap = client.register_script(redis_lua.SWAP)
        self.admit = client.register_script(redis_lua.ADMIT)
        self.complete = client.register_script(redis_lua.COMPLETE)
        self.give_back = client.register_script(redis_lua.GIVE_BACK)

    def key(self, *parts: str | int) -> str:
        return ":".join([self.namespace, *map(str, parts)])

    @asynccontextmanager
    async def translated(self) -> AsyncIterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StateUnavailable(f"state store {self._location}: {exc}") from exc

    async def run(self, script: AsyncScript, keys: list[str], args: list[str | bytes | int]) -> Any:
        # The request path's call: a plain try costs less than the context manager.
        try:
            return await script(keys=keys, args=args)
        except self._errors as exc:
            raise StateUnavailable(f"state store {self._location}: {exc}") from exc


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisBudgets:
    """Budget counters as hashes, their holds' expiries as sorted sets."""

    def __init__(self, conn: _Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    async def reserve(
        self, scopes: list[BudgetScope], amount_usd: float, *, request_id: str, ttl_s: float
    ) -> Reservation | BudgetExceeded:
        now, amount = self._clock(), to_micros(amount_usd)
        plan = budget_plan(scopes, now=now)
        hold = new_hold(plan, amount, request_id, now + ttl_s)
        args: list[str | bytes | int] = [_ms(now), hold.id, amount, _ms(hold.expires_at)]
        for item in plan:
            # Keep the counter a grace period past its window, and at least as long as the hold.
            keep = max(item.counter.ends_at + COUNTER_GRACE_S, hold.expires_at) - now
            args += [item.limit, _ms(keep)]
        ok, index, spent, held = await self._conn.run(self._conn.reserve, self._keys(hold.charges), args)
        return hold if ok else refusal(plan[int(index) - 1], int(spent), int(held))

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        return await self._finish(reservation, to_micros(actual_usd))

    async def release(self, reservation: Reservation) -> bool:
        return await self._finish(reservation, 0)

    async def usage(self, scope: BudgetScope) -> BudgetUsage:
        now = self._clock()
        keys = self._keys([counter_for(scope, now=now).name])
        spent, held = await self._conn.run(self._conn.usage, keys, [_ms(now)])
        return BudgetUsage(to_usd(int(spent)), to_usd(int(held)), scope.limit_usd)

    async def _finish(self, reservation: Reservation, charge: int) -> bool:
        keys = [self._conn.key("budget-finished", reservation.id), *self._keys(reservation.charges)]
        done = await self._conn.run(self._conn.finish, keys, [reservation.id, charge, _ms(FINISHED_TTL_S)])
        return bool(done)

    def _keys(self, counters: tuple[str, ...] | list[str]) -> list[str]:
        return [key for name in counters for key in (self._conn.key("budget", name), self._conn.key("holds", name))]


class RedisRates:
    """Rate buckets as plain counters, one key per counter and minute."""

    def __init__(self, conn: _Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    async def acquire(self, scopes: list[RateScope], *, tokens: int) -> RateDecision:
        plan = rate_plan(scopes, tokens=tokens)
        if not plan:
            return RateDecision(True)
        bucket, elapsed = bucket_of(self._clock())
        keys = [self._conn.key("rate", c.name, b) for c in plan for b in (bucket - 1, bucket)]
        args: list[str | bytes | int] = [RATE_WIDTH_MS, elapsed, 2 * RATE_WIDTH_MS]
        for item in plan:
            args += [item.limit, item.cost]
        fits, *counts = await self._conn.run(self._conn.rate, keys, args)
        if fits:
            return RateDecision(True)
        pairs = [(int(counts[i]), int(counts[i + 1])) for i in range(0, len(counts), 2)]
        return decide(plan, pairs, elapsed)

    async def give_back(self, scopes: list[RateScope], *, requests: int, tokens: int, at: float) -> None:
        plan, bucket = rate_plan(scopes, tokens=tokens, requests=requests), bucket_of(at)[0]
        if plan:
            keys = [self._conn.key("rate", item.name, bucket) for item in plan]
            await self._conn.run(self._conn.give_back, keys, [item.cost for item in plan])

    async def record(self, scopes: list[RateScope], *, tokens: int) -> None:
        plan = rate_plan(scopes, tokens=tokens, requests=0)
        if not plan:
            return
        bucket = bucket_of(self._clock())[0]
        async with self._conn.translated(), self._conn.client.pipeline(transaction=False) as pipe:
            for item in plan:
                key = self._conn.key("rate", item.name, bucket)
                pipe.incrby(key, item.cost)
                pipe.pexpire(key, 2 * RATE_WIDTH_MS)
            await pipe.execute()


class RedisAdmissions:
    """The rate count and the budget hold as one script; a completion as one more."""

    def __init__(self, conn: _Connection, budgets: RedisBudgets, clock: Clock) -> None:
        self._conn = conn
        self._budgets = budgets
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
        if not plan and not charges:
            return Admitted(RateDecision(True))
        bucket, elapsed = bucket_of(now)
        hold = new_hold(charges, amount, request_id, now + ttl_s)
        keys = [self._conn.key("rate", c.name, b) for c in plan for b in (bucket - 1, bucket)]
        keys += self._budgets._keys(hold.charges)
        args: list[str | bytes | int] = [len(plan), RATE_WIDTH_MS, elapsed, 2 * RATE_WIDTH_MS]
        for item in plan:
            args += [item.limit, item.cost]
        args += [_ms(now), hold.id, amount, _ms(hold.expires_at)]
        for charge in charges:
            keep = max(charge.counter.ends_at + COUNTER_GRACE_S, hold.expires_at) - now
            args += [charge.limit, _ms(keep)]
        outcome, *rest = await self._conn.run(self._conn.admit, keys, args)
        if int(outcome) == 1:
            return Admitted(RateDecision(True), hold if charges else None)
        if int(outcome) == 2:
            index, spent, held = map(int, rest)
            return Admitted(RateDecision(True), refusal(charges[index - 1], spent, held))
        pairs = [(int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
        return Admitted(decide(plan, pairs, elapsed))

    async def complete(
        self,
        hold: Reservation | None,
        actual_usd: float,
        rates: list[RateScope],
        *,
        tokens: int,
        budgets: list[BudgetScope],
    ) -> list[BudgetUsage]:
        now = self._clock()
        plan = rate_plan(rates, tokens=tokens, requests=0) if tokens else []
        bucket = bucket_of(now)[0]
        conn = self._conn
        keys: list[str] = []
        if hold is not None:
            keys += [conn.key("budget-finished", hold.id), *self._budgets._keys(hold.charges)]
        keys += [conn.key("rate", item.name, bucket) for item in plan]
        keys += self._budgets._keys([counter_for(scope, now=now).name for scope in budgets])
        args: list[str | bytes | int] = [
            int(hold is not None), len(hold.charges) if hold else 0, len(plan), len(budgets),
            hold.id if hold else "", to_micros(actual_usd), _ms(FINISHED_TTL_S), 2 * RATE_WIDTH_MS, _ms(now),
            *(item.cost for item in plan),
        ]  # fmt: skip
        counts = await conn.run(conn.complete, keys, args)
        return [
            BudgetUsage(to_usd(int(counts[2 * i])), to_usd(int(counts[2 * i + 1])), scope.limit_usd)
            for i, scope in enumerate(budgets)
        ]


class RedisKeys:
    """Key records as JSON in one hash, by key hash."""

    def __init__(self, conn: _Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock
        self._hash = conn.key("client-keys")

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
        async with self._conn.translated():
            created = await self._conn.client.hsetnx(self._hash, key_hash, key_to_json(record))
        if not created:
            raise ValueError(f"a key with hash {key_hash[:15]}… already exists")
        return record

    async def get(self, key_hash: str) -> KeyRecord | None:
        async with self._conn.translated():
            text = await self._conn.client.hget(self._hash, key_hash)
        return None if text is None else key_from_json(text)

    async def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        async with self._conn.translated():
            texts = await self._conn.client.hvals(self._hash)
        found = [record for record in map(key_from_json, texts) if tenant is None or record.tenant == tenant]
        return sorted(found, key=lambda r: (r.created_at, r.key_hash))

    async def revoke(self, key_hash: str) -> bool:
        while True:
            async with self._conn.translated():
                text = await self._conn.client.hget(self._hash, key_hash)
            if text is None or (record := key_from_json(text)).revoked:
                return False
            revoked = key_to_json(dataclasses.replace(record, revoked=True))
            # Written only over what was read: a concurrent change makes us read again.
            if await self._conn.run(self._conn.swap, [self._hash], [key_hash, text, revoked]):
                return True


class RedisKeyValues:
    """Values as hashes ``{value, expires}`` (milliseconds by the caller's clock)."""

    def __init__(self, conn: _Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    async def get(self, key: str) -> str | None:
        async with self._conn.translated():
            value, expires = await self._conn.client.hmget(self._conn.key("kv", key), ["value", "expires"])
        if expires and int(expires) <= _ms(self._clock()):
            return None
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        name = self._conn.key("kv", key)
        async with self._conn.translated(), self._conn.client.pipeline(transaction=True) as pipe:
            pipe.delete(name)
            if ttl_s is None:
                pipe.hset(name, "value", value)
            else:
                pipe.hset(name, mapping={"value": value, "expires": _ms(self._clock() + ttl_s)})
                pipe.pexpire(name, max(1, _ms(ttl_s)))
            await pipe.execute()

    async def delete(self, key: str) -> None:
        async with self._conn.translated():
            await self._conn.client.delete(self._conn.key("kv", key))


class RedisState:
    """Budgets, rate windows, keys and values in Redis, under ``namespace``.

    >>> state = RedisState("redis://127.0.0.1:6379/0", namespace="staging")  # doctest: +SKIP
    >>> await state.rates.acquire([RateScope("tenant:acme", requests_per_minute=600)], tokens=0)  # doctest: +SKIP
    RateDecision(allowed=True, retry_after_s=None, scope=None, kind=None)
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "hybrid-router",
        clock: Clock = time.time,
        timeout_s: float = 2.0,
    ) -> None:
        redis = _import_redis()
        client = redis.asyncio.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        location = url.rpartition("@")[2]  # never the password
        self._conn = _Connection(client, namespace, redis.exceptions.RedisError, location)
        self.budgets = RedisBudgets(self._conn, clock)
        self.rates = RedisRates(self._conn, clock)
        self.keys = RedisKeys(self._conn, clock)
        self.kv = RedisKeyValues(self._conn, clock)
        self.admissions = RedisAdmissions(self._conn, self.budgets, clock)

    async def close(self) -> None:
        await self._conn.client.aclose()
