"""Who is calling: a bearer key, looked up in config and then in the state store, gives a tenant and limits.

Keys come from three places, all kept as ``sha256:<hex>`` hashes:

* ``auth.keys`` (tenant, limits, allowed targets) and ``auth.api_key_hashes``
  plus the ``$HYBRID_ROUTER_API_KEYS`` env var (tenant ``default``): config;
* ``hybrid-router keys create``: the state store, so every worker and replica
  sees a key the moment it is created. A looked-up key is trusted for
  ``state.key_cache_s`` before the store is asked again, which is also how long
  a revocation takes to reach a running gateway.

With no key anywhere, every caller is the tenant ``default`` (the loopback
sidecar case; :func:`service.auth.startup_problems` keeps a gateway from
serving anywhere else that way). A hash is looked up, never compared byte by
byte: what an attacker sends is hashed first, so timing reveals nothing of
the stored hashes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from router.errors import AuthenticationFailed, StateUnavailable
from router.state import KeyLimits, KeyRecord, KeyStore
from service.auth import DEFAULT_TENANT, hash_key

__all__ = ["ANONYMOUS", "Client", "ClientDirectory"]

log = logging.getLogger("hybrid_router.clients")


@dataclass(frozen=True, slots=True)
class Client:
    """The caller of one request: its key's hash (None without keys), tenant, own limits and allowed targets.

    ``verified`` is False only when the state store was down and the key could
    not be checked (``state.on_outage: edge`` then serves it on local targets).
    """

    key_hash: str | None
    tenant: str
    limits: KeyLimits = field(default_factory=KeyLimits)
    allowed_targets: tuple[str, ...] | None = None
    verified: bool = True

    @classmethod
    def of(cls, record: KeyRecord) -> Client:
        return cls(record.key_hash, record.tenant, record.limits, record.allowed_targets)


ANONYMOUS = Client(None, DEFAULT_TENANT)


class ClientDirectory:
    """Resolves ``Authorization: Bearer <key>`` to a :class:`Client`, or raises :class:`AuthenticationFailed`.

    >>> import asyncio
    >>> from router.state import MemoryState
    >>> record = KeyRecord(hash_key("sk-1"), "acme", created_at=0.0)
    >>> directory = ClientDirectory([record], MemoryState().keys)
    >>> asyncio.run(directory.identify("Bearer sk-1")).tenant
    'acme'
    """

    def __init__(
        self,
        configured: Iterable[KeyRecord],
        store: KeyStore | None,
        *,
        cache_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configured = {record.key_hash: record for record in configured}
        self._store = store
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        # Whether the store holds any live key, and when that was last asked.
        self._store_has_keys = False
        self._checked_at = -float("inf")

    @property
    def enabled(self) -> bool:
        """Whether a key is required (as last known: :meth:`refresh` asks the store)."""
        return bool(self._configured) or self._store_has_keys

    async def refresh(self) -> bool:
        """Ask the store whether it holds any key (revoked ones too); a store that is down keeps the last answer."""
        self._checked_at = self._clock()
        if self._store is None:
            return self.enabled
        try:
            # Revoked keys count: revoking the last key must not open the gateway to everyone.
            self._store_has_keys = bool(await self._store.list())
        except StateUnavailable as exc:
            log.warning("could not list client keys in the state store: %s", exc)
        return self.enabled

    async def identify(self, authorization: str | None) -> Client:
        if not self._configured and self._clock() - self._checked_at > self._cache_s:
            # Keys may have been created since (another worker, the CLI): a key-less gateway looks again.
            await self.refresh()
        if not self.enabled:
            return ANONYMOUS
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        digest = hash_key(key)
        record = self._configured.get(digest)
        if record is None:
            try:
                record = await self._lookup(digest)
            except StateUnavailable:
                # A key that cannot be checked is neither trusted with spend nor turned away blindly: the
                # caller decides (state.on_outage) with ``verified`` False.
                return Client(digest, DEFAULT_TENANT, verified=False)
        if record is None or record.revoked:
            raise AuthenticationFailed("Incorrect API key provided.")
        return Client.of(record)

    async def authenticated(self, authorization: str | None) -> bool:
        """True only for a valid key; with no keys anywhere nobody is, so nothing private is shown."""
        if not self.enabled:
            return False
        try:
            client = await self.identify(authorization)
        except AuthenticationFailed:
            return False
        return client.verified and client.key_hash is not None

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and self._cache_s > 0 and now - cached[0] < self._cache_s:
            return cached[1]
        if self._store is None:
            return None
        record = await self._store.get(digest)
        if len(self._cache) > 10_000:
            # Unknown keys are cached too (a client hammering with a wrong key costs one lookup a period);
            # the bound keeps random keys from growing memory.
            self._cache.clear()
        self._cache[digest] = (now, record)
        return record
