"""The contracts of the shared state: budgets, rate windows, client keys and a small key-value store.

:class:`Admissions` asks the budgets and the rate windows at once: what the
request path uses, one call to the store per request and one per completion.

Every method is a coroutine: the gateway is asyncio, Redis is reached with
``redis.asyncio``, and SQLite runs its blocking calls on one worker thread of
its own (:mod:`router.state.sqlite`). One backend module builds all
its parts over one connection; :class:`StateStore` is that bundle. The in-memory
fake (:mod:`router.state.memory`), SQLite and Redis pass one contract suite
(``tests/state/contract.py``).

Amounts are US dollars at the surface and whole micro-dollars inside, so
sums are exact in SQLite, in Redis's Lua and in Python alike.

>>> scope = BudgetScope("tenant:acme", "day", limit_usd=5.0)
>>> scope.subject, scope.window, scope.limit_usd
('tenant:acme', 'day', 5.0)
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "Admissions",
    "Admitted",
    "BudgetExceeded",
    "BudgetScope",
    "BudgetStore",
    "BudgetUsage",
    "KeyLimits",
    "KeyRecord",
    "KeyStore",
    "KeyValueStore",
    "RateDecision",
    "RateLimiter",
    "RateScope",
    "Reservation",
    "StateStore",
    "Window",
]

Window = Literal["day", "month"]
"""A budget's calendar window, in UTC."""

_HASH = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """One spend limit: who (``key:<hash>``, ``tenant:<name>``), over which window, and how much.

    The limit travels with each call rather than living in the store, so a
    config change applies to the next request without a migration.
    """

    subject: str
    window: Window
    limit_usd: float

    def __post_init__(self) -> None:
        if not self.subject or "|" in self.subject:
            raise ValueError(f"a budget subject must be non-empty and free of '|': {self.subject!r}")
        if self.limit_usd < 0:
            raise ValueError(f"a budget limit must not be negative: {self.limit_usd}")


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold placed by :meth:`BudgetStore.reserve`; hand it to ``settle`` or ``release``.

    ``charges`` names the counters (one per scope, for the window the hold
    was placed in) that the hold sits on and that settling charges, so a
    request that ends after midnight is charged to the day it started in.
    """

    id: str
    request_id: str
    amount_usd: float
    charges: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """A refused reservation: the first scope without room, what it had left, and when its window resets."""

    scope: BudgetScope
    remaining_usd: float
    resets_at: float


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One scope in its current window: settled spend plus live holds, against the limit."""

    spent_usd: float
    held_usd: float
    limit_usd: float

    @property
    def remaining_usd(self) -> float:
        return max(0.0, round(self.limit_usd - self.spent_usd - self.held_usd, 6))


class BudgetStore(Protocol):
    """Spend limits, reserved at admission and settled on completion, with no overshoot.

    ``reserve`` is atomic across every scope and every process sharing the
    store: either each scope has room and each gets the hold, or none does.
    A hold counts against its scopes until it is settled, released or its
    ``ttl_s`` passes (a crashed process's holds free themselves). Settling
    charges the real cost, even above the estimate and even after the hold
    expired; settling or releasing a second time does nothing and says so.
    """

    async def reserve(
        self, scopes: list[BudgetScope], amount_usd: float, *, request_id: str, ttl_s: float
    ) -> Reservation | BudgetExceeded:
        """Hold ``amount_usd`` on every scope's current window, or return the first scope without room."""
        ...

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        """Charge ``actual_usd`` and drop the hold; False when it was already settled or released."""
        ...

    async def release(self, reservation: Reservation) -> bool:
        """Drop the hold without charging (the request failed); False when it was already done."""
        ...

    async def usage(self, scope: BudgetScope) -> BudgetUsage: ...


@dataclass(frozen=True, slots=True)
class RateScope:
    """Per-minute limits for one subject; ``None`` means no limit of that kind."""

    subject: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether :meth:`RateLimiter.acquire` admitted the request, and if not, which limit refused it.

    ``retry_after_s`` is how long until the request would fit if nothing
    else arrived; ``None`` on a refusal means never (its tokens alone exceed
    the limit).
    """

    allowed: bool
    retry_after_s: float | None = None
    scope: RateScope | None = None
    kind: Literal["requests", "tokens"] | None = None


class RateLimiter(Protocol):
    """Requests and tokens per minute over a sliding window, checked and counted atomically.

    The window is the two-bucket sliding-window counter: the current
    minute's count plus the previous minute's, weighted by how much of it
    still lies inside the last 60 seconds. It keeps two integers per limit
    (a log would keep one entry per request: thousands per busy key) and
    stays within a few percent of the exact count for steady traffic, which
    is what a rate limit needs; exactness is the budgets' job.
    """

    async def acquire(self, scopes: list[RateScope], *, tokens: int) -> RateDecision:
        """Count one request and ``tokens`` against every scope, or none of them if any limit refuses."""
        ...

    async def record(self, scopes: list[RateScope], *, tokens: int) -> None:
        """Count tokens learnt later (the completion's) without refusing anything."""
        ...

    async def give_back(self, scopes: list[RateScope], *, requests: int, tokens: int, at: float) -> None:
        """Uncount ``requests`` and ``tokens`` counted at ``at`` and never used (a lease's leftovers).

        Only from the bucket ``at`` fell in, and never below zero; once that
        bucket has slid out of the window there is nothing left to give back.
        """
        ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """What :meth:`Admissions.admit` did: the rate decision and the hold (``None`` when none was asked).

    Something was counted and held only when :attr:`ok`; a request that fits
    its rate limits but not its budget has ``rate.allowed`` True and counted nothing.
    """

    rate: RateDecision
    hold: Reservation | BudgetExceeded | None = None

    @property
    def ok(self) -> bool:
        return self.rate.allowed and not isinstance(self.hold, BudgetExceeded)


class Admissions(Protocol):
    """One request's rate count and budget hold as one atomic call, and its completion as one more.

    The same promises as :class:`RateLimiter` and :class:`BudgetStore`, asked
    together: the request path waits for one call to the store, not two,
    and ending a request (settle, the completion's tokens, what is left of
    each budget) is one call too. ``admit`` is both-or-neither: a refusal
    by either counts nothing and holds nothing.
    """

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
        """Count ``requests`` and ``tokens`` on ``rates`` and hold ``amount_usd`` on ``budgets`` (none if empty).

        More than one request is a lease (:mod:`router.state.leases`): slots admitted ahead of their requests.
        """
        ...

    async def complete(
        self,
        hold: Reservation | None,
        actual_usd: float,
        rates: list[RateScope],
        *,
        tokens: int,
        budgets: list[BudgetScope],
    ) -> list[BudgetUsage]:
        """Settle ``hold`` at ``actual_usd`` (0 releases it), count ``tokens`` learnt late, and read ``budgets``.

        A store reads every budget; a lease's request gets what was last read, or nothing yet (an empty list).
        """
        ...


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A client key's own limits, on top of its tenant's; ``None`` means none of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A client key as stored: its ``sha256:<hex>`` hash (never the key), tenant and limits.

    ``allowed_targets`` ``None`` allows every target.

    >>> KeyRecord("sha256:" + "0" * 64, "acme", created_at=0.0).revoked
    False
    >>> KeyRecord("sk-plain-key", "acme", created_at=0.0)
    Traceback (most recent call last):
    ...
    ValueError: key_hash must be 'sha256:<64 hex digits>' (the store never keeps a plain key)
    """

    key_hash: str
    tenant: str
    label: str = ""
    limits: KeyLimits = field(default_factory=KeyLimits)
    allowed_targets: tuple[str, ...] | None = None
    created_at: float = 0.0
    revoked: bool = False

    def __post_init__(self) -> None:
        if not _HASH.fullmatch(self.key_hash):
            raise ValueError("key_hash must be 'sha256:<64 hex digits>' (the store never keeps a plain key)")
        if not self.tenant:
            raise ValueError("a key needs a tenant")


class KeyStore(Protocol):
    """Client keys by hash. Revoked keys stay listed (an audit trail) but authenticate nobody."""

    async def create(
        self,
        key_hash: str,
        *,
        tenant: str,
        label: str = "",
        limits: KeyLimits | None = None,
        allowed_targets: tuple[str, ...] | None = None,
    ) -> KeyRecord:
        """Store a new key; ``ValueError`` when the hash is already there."""
        ...

    async def get(self, key_hash: str) -> KeyRecord | None: ...

    async def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        """Every key (of one tenant), oldest first."""
        ...

    async def revoke(self, key_hash: str) -> bool:
        """Mark the key revoked; False when it is unknown or already revoked."""
        ...


class KeyValueStore(Protocol):
    """Small shared values that expire: circuit states, sticky sessions. Callers namespace their keys."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, ttl_s: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...


class StateStore(Protocol):
    """One backend's parts over one connection; ``close()`` once at shutdown."""

    @property
    def budgets(self) -> BudgetStore: ...

    @property
    def rates(self) -> RateLimiter: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def kv(self) -> KeyValueStore: ...

    @property
    def admissions(self) -> Admissions: ...

    async def close(self) -> None: ...
