"""Admission leases: a busy client's requests admitted in this process, with no store call on their path.

On Redis every admission is a network round trip (about 0.2 ms with
``redis.asyncio`` on loopback, more across a network) and every completion
another. A **lease** is one admission made ahead of time for many requests
with the same scopes: ``R`` request slots and ``T`` prompt tokens counted on
their rate limits and ``U`` USD held on their budgets, in one atomic store
call, off the request path. The client's next requests take from it here
until it runs out or its short life ends; then it **retires**: one call
gives back the slots and tokens nobody used, one more settles what its
requests really cost on its hold (releasing the rest) and counts the tokens
they generated.

Why the promises still hold:

* **Budgets never overshoot.** A request is admitted here only against money
  the store already holds for this process. A lease is at most ``fraction``
  of each budget and at least two requests' worth, so near a budget's edge
  none fits and requests go to the store one by one, as without leases.
* **Rate limits.** Slots are counted when leased, so no later than their
  requests run, and in the same minute bucket: a lease never outlives the
  bucket it was counted in. Unused slots are given back when it retires. A
  lease is ``fraction`` of each limit; a limit too small for two slots is
  never leased. While a lease lives, other replicas see its unused slots as
  taken: at most ``fraction`` of the limit, for at most ``lease_s``.
* A crashed process's lease hold frees itself after ``hold_ttl_s``, like any hold.

Only clients admitted twice at the store within ``lease_s`` get leases.
What a lease costs: the budget-remaining gauge and the tokens its requests
generated reach the store when it retires (within ``lease_s`` plus the
longest request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from router.errors import StateUnavailable
from router.state.base import (
    Admissions,
    Admitted,
    BudgetScope,
    BudgetUsage,
    RateDecision,
    RateLimiter,
    RateScope,
    Reservation,
)
from router.state.windows import RATE_WIDTH_MS, bucket_of, to_micros, to_usd

__all__ = ["LeasedAdmissions"]

log = logging.getLogger("hybrid_router.state")

_Key = tuple[tuple[RateScope, ...], tuple[BudgetScope, ...]]
# Requests a lease's money covers when no request limit sizes it (budgets alone).
_REQUESTS_WITHOUT_LIMIT = 64
_BUCKET_S = RATE_WIDTH_MS / 1000


@dataclass(eq=False)
class _Lease:
    hold: Reservation | None
    # Size, and what is left to hand out; None: that kind is not limited.
    requests: int | None
    tokens: int | None
    micros: int
    # When the store counted it (its rate bucket), and when it stops handing out.
    at: float
    use_by: float
    left_requests: int | None = None
    left_tokens: int | None = None
    left_micros: int = 0
    outstanding: int = 0
    spent: int = 0
    given_back: bool = False
    retired: bool = False

    def __post_init__(self) -> None:
        self.left_requests, self.left_tokens, self.left_micros = self.requests, self.tokens, self.micros

    def take(self, now: float, tokens: int, micros: int) -> bool:
        if now >= self.use_by or (self.left_requests is not None and self.left_requests < 1):
            return False
        if self.left_tokens is not None and self.left_tokens < tokens:
            return False
        if self.hold is not None and self.left_micros < micros:
            return False
        if self.left_requests is not None:
            self.left_requests -= 1
        if self.left_tokens is not None:
            self.left_tokens -= tokens
        self.left_micros -= micros
        self.outstanding += 1
        return True

    def healthy(self, now: float) -> bool:
        """More than half of it left, in life and in each kind: no need to ask for the next one yet."""
        return (
            (self.use_by - now) * 2 > self.use_by - self.at
            and (self.requests is None or (self.left_requests or 0) * 2 > self.requests)
            and (self.tokens is None or (self.left_tokens or 0) * 2 > self.tokens)
            and (self.hold is None or self.left_micros * 2 > self.micros)
        )

    def done(self, now: float) -> bool:
        """Nothing more to hand out and no request of its own still running: time to retire."""
        spent_out = now >= self.use_by or self.left_requests == 0
        return spent_out and self.outstanding == 0


@dataclass(eq=False)
class _Client:
    """One combination of scopes: its leases, its recent admissions at the store, tokens it learnt late."""

    rates: list[RateScope]
    budgets: list[BudgetScope]
    leases: list[_Lease] = field(default_factory=list)
    at_store: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    seen: float = 0.0
    acquiring: bool = False
    not_before: float = 0.0
    late_tokens: int = 0
    usage: list[BudgetUsage] | None = None


class LeasedAdmissions:
    """:class:`Admissions` over a store's own, admitting busy clients from leases (see the module).

    ``fraction`` of each rate and budget limit is one lease; ``lease_s`` its
    longest life. ``close()`` retires every lease; call it after the requests'
    own completions (``SpendControl.drain``), before the store closes.
    """

    def __init__(
        self,
        admissions: Admissions,
        rates: RateLimiter,
        *,
        fraction: float = 0.05,
        lease_s: float = 1.0,
        hold_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < fraction <= 0.5:
            raise ValueError(f"a lease is a fraction of a limit, in (0, 0.5]: {fraction}")
        self._inner = admissions
        self._rates = rates
        self._fraction = fraction
        self._lease_s = lease_s
        self._hold_ttl_s = hold_ttl_s
        self._clock = clock
        self._clients: dict[_Key, _Client] = {}
        self._leased: dict[str, tuple[_Client, _Lease]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def leases(self) -> int:
        """Leases alive now."""
        return sum(len(client.leases) for client in self._clients.values())

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
        now = self._clock()
        key: _Key = (tuple(rates), tuple(budgets))
        client = self._clients.get(key)
        if client is not None and requests == 1:
            client.seen = now
            micros = to_micros(amount_usd)
            for lease in client.leases:
                if lease.take(now, tokens, micros):
                    if not any(other.healthy(now) for other in client.leases):
                        self._acquire_soon(client, now, tokens, micros)
                    return Admitted(RateDecision(True), self._local_hold(client, lease, request_id, amount_usd))
        admitted = await self._inner.admit(
            rates, budgets, tokens=tokens, amount_usd=amount_usd, request_id=request_id, ttl_s=ttl_s,
            requests=requests,
        )  # fmt: skip
        if admitted.ok and requests == 1 and not self._closed:
            # Looked up again: concurrent first requests of one client must find the same entry.
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _Client(list(rates), list(budgets))
            client.seen = now
            client.at_store.append(now)
            # Busy: admitted at the store twice within a lease's life. A quiet client never holds a lease.
            if len(client.at_store) == 2 and now - client.at_store[0] < self._lease_s:
                self._acquire_soon(client, now, tokens, to_micros(amount_usd))
        return admitted

    async def complete(
        self,
        hold: Reservation | None,
        actual_usd: float,
        rates: list[RateScope],
        *,
        tokens: int,
        budgets: list[BudgetScope],
    ) -> list[BudgetUsage]:
        leased = self._leased.pop(hold.id, None) if hold is not None else None
        if leased is None:
            return await self._inner.complete(hold, actual_usd, rates, tokens=tokens, budgets=budgets)
        client, lease = leased
        lease.spent += to_micros(actual_usd)
        lease.outstanding -= 1
        client.late_tokens += tokens
        if lease.done(self._clock()):
            await self._retire(client, lease)
        # What the store said when the lease was taken or last retired (the gauge lags by a lease's life).
        return client.usage if client.usage is not None and len(client.usage) == len(budgets) else []

    async def taken(self) -> None:
        """Wait for the leases being asked for now (tests, and ``close``)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """Retire every lease: unused slots back, what its requests cost settled, the rest of its hold released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        for client in list(self._clients.values()):
            for lease in list(client.leases):
                await self._retire(client, lease)

    # -- leases ------------------------------------------------------------------------------------

    def _local_hold(self, client: _Client, lease: _Lease, request_id: str, amount_usd: float) -> Reservation:
        # Every leased request gets one, budgets or not: its completion must find its lease.
        charges = lease.hold.charges if lease.hold is not None else ()
        local = Reservation(f"lease-{uuid.uuid4().hex}", request_id, amount_usd, charges, lease.use_by)
        self._leased[local.id] = (client, lease)
        return local

    def _size(self, client: _Client, tokens: int, micros: int) -> tuple[int | None, int | None, int] | None:
        """Slots, tokens and micro-dollars for one lease; None when a limit is too small to lease."""
        requests: int | None = None
        token_room: int | None = None
        for scope in client.rates:
            if scope.requests_per_minute is not None:
                share = math.floor(scope.requests_per_minute * self._fraction)
                requests = share if requests is None else min(requests, share)
            if scope.tokens_per_minute is not None:
                share = math.floor(scope.tokens_per_minute * self._fraction)
                token_room = share if token_room is None else min(token_room, share)
        if requests is not None and requests < 2:
            return None
        if token_room is not None and token_room < 2 * max(tokens, 1):
            return None
        money = 0
        if client.budgets:
            if micros <= 0:
                return None
            shares = [math.floor(to_micros(scope.limit_usd) * self._fraction) for scope in client.budgets]
            money = min([micros * (requests or _REQUESTS_WITHOUT_LIMIT), *shares])
            if money < 2 * micros:
                return None
        return requests, token_room, money

    def _acquire_soon(self, client: _Client, now: float, tokens: int, micros: int) -> None:
        if client.acquiring or now < client.not_before or self._closed or len(client.leases) >= 3:
            return
        size = self._size(client, tokens, micros)
        if size is None:
            client.not_before = now + self._lease_s  # nothing to lease at these limits; look again later
            return
        client.acquiring = True
        self._spawn(self._acquire(client, *size))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _acquire(self, client: _Client, requests: int | None, tokens: int | None, micros: int) -> None:
        before = self._clock()
        try:
            admitted = await self._inner.admit(
                client.rates, client.budgets, tokens=tokens or 0, amount_usd=to_usd(micros),
                request_id=f"lease-{uuid.uuid4().hex}", ttl_s=self._hold_ttl_s, requests=requests or 0,
            )  # fmt: skip
        except StateUnavailable as exc:
            log.debug("no lease: %s", exc)
            client.not_before = self._clock() + self._lease_s
            return
        finally:
            client.acquiring = False
        after = self._clock()
        if not admitted.ok:
            # At a limit's edge: requests go to the store one by one, as without leases.
            client.not_before = after + self._lease_s
            return
        hold = admitted.hold if isinstance(admitted.hold, Reservation) else None
        if hold is not None and client.usage is None:
            with contextlib.suppress(StateUnavailable):
                client.usage = await self._inner.complete(None, 0.0, [], tokens=0, budgets=client.budgets)
        bucket = bucket_of(before)[0]
        # Never past the minute bucket its slots were counted in (a lease straddling two retires at once).
        use_by = min(before + self._lease_s, (bucket + 1) * _BUCKET_S)
        lease = _Lease(hold, requests, tokens, micros, before, use_by if bucket_of(after)[0] == bucket else before)
        if self._closed or lease.use_by <= after:
            await self._retire(client, lease)
        else:
            client.leases.append(lease)

    async def _give_back(self, client: _Client, lease: _Lease) -> None:
        """Once a lease hands out no more: uncount its unused slots and tokens, from the bucket they are in."""
        if lease.given_back:
            return
        lease.given_back = True
        unused_requests, unused_tokens = lease.left_requests or 0, lease.left_tokens or 0
        lease.left_requests = 0 if lease.requests is not None else None
        lease.left_tokens = 0 if lease.tokens is not None else None
        # Once that bucket has slid out of the window they count for nothing, and there is nothing to give.
        if (unused_requests or unused_tokens) and bucket_of(self._clock())[0] - bucket_of(lease.at)[0] <= 1:
            await self._rates.give_back(client.rates, requests=unused_requests, tokens=unused_tokens, at=lease.at)

    async def _retire(self, client: _Client, lease: _Lease) -> None:
        if lease in client.leases:
            client.leases.remove(lease)
        if lease.retired:
            return  # the sweeper and a request's completion can both find it done
        lease.retired = True
        if lease.outstanding:
            log.warning("a lease retires with %d requests still running; their cost is not charged", lease.outstanding)
        tokens, client.late_tokens = client.late_tokens, 0
        try:
            await self._give_back(client, lease)
            if lease.hold is not None or tokens:
                client.usage = await self._inner.complete(
                    lease.hold, to_usd(lease.spent), client.rates if tokens else [], tokens=tokens,
                    budgets=client.budgets,
                )  # fmt: skip
        except StateUnavailable as exc:
            # The hold frees itself after hold_ttl_s; what the lease's requests cost is lost, and said so.
            log.warning("could not retire a lease (%.6f USD, %d tokens): %s", to_usd(lease.spent), tokens, exc)

    async def _sweep(self) -> None:
        """Retire leases that are done, and forget clients gone quiet."""
        while self._clients and not self._closed:
            await asyncio.sleep(self._lease_s / 4)
            now = self._clock()
            for key, client in list(self._clients.items()):
                for lease in list(client.leases):
                    try:
                        if lease.done(now):
                            await self._retire(client, lease)
                        elif now >= lease.use_by:
                            # Its requests still run (its money stays held), but its unused slots go back now.
                            await self._give_back(client, lease)
                    except StateUnavailable as exc:
                        log.warning("could not give a lease's unused slots back: %s", exc)
                quiet = now - client.seen > 60 * self._lease_s
                if quiet and not client.leases and not client.acquiring and not client.late_tokens:
                    del self._clients[key]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
