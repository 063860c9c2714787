"""Which conversation a request belongs to, and where recent conversations were served.

A conversation is named by the client's ``x-session-id`` header when it
sends one, else by a hash of its opening: the system prompt and the first
user turn stay the same for every later turn of one chat, while the turns
after them grow. :class:`MemorySessions` keeps the target per conversation
for a while in the process; :class:`SharedSessions` keeps it in the state
store too (``state.url`` on SQLite or Redis), so every worker and replica
keeps a conversation where any of them escalated it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from router.chat import ChatRequest
from router.errors import StateUnavailable
from router.state.base import KeyValueStore

__all__ = ["MemorySessions", "SessionStore", "SharedSessions", "Stuck", "conversation_key"]

log = logging.getLogger("hybrid_router.sessions")

SESSION_ID = "session_id"
"""The ``ChatRequest.memo`` key the service stores a valid ``x-session-id`` under."""
_KEY = "conversation_key"


def conversation_key(request: ChatRequest) -> str:
    """``id:<x-session-id>``, or ``opening:<hash>`` of the messages up to and including the first user turn."""
    # Kept on the request: the sticky policy reads it when routing and again once the answer is in.
    cached = request.memo.get(_KEY)
    if isinstance(cached, str):
        return cached
    given = request.memo.get(SESSION_ID)
    if isinstance(given, str) and given:
        key = f"id:{given}"
    else:
        opening = []
        for message in request.messages:
            opening.append((message.role, message.text()))
            if message.role == "user":
                break
        key = "opening:" + hashlib.sha256(orjson.dumps(opening)).hexdigest()[:32]
    request.memo[_KEY] = key
    return key


@dataclass(frozen=True, slots=True)
class Stuck:
    """A conversation's target and when it was last served there (``time.monotonic``)."""

    target: str
    since: float


class SessionStore(Protocol):
    """Where conversations were escalated to, for a while."""

    def get(self, key: str) -> Stuck | None: ...

    def put(self, key: str, target: str) -> None: ...


class MemorySessions:
    """An in-process store: entries expire ``ttl_s`` after their last use; the oldest go past ``max_entries``.

    >>> sessions = MemorySessions(ttl_s=60)
    >>> sessions.put("opening:ab", "cloud")
    >>> sessions.get("opening:ab").target
    'cloud'
    """

    def __init__(
        self, *, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, Stuck] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Stuck | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() - entry.since > self.ttl_s:
                del self._entries[key]
                return None
            return entry

    def put(self, key: str, target: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = Stuck(target, self._clock())
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class SharedSessions:
    """Sessions in the shared state store, read through a local copy.

    A policy reads while routing, synchronously: :meth:`load` (awaited by the
    router before it routes, through the policy's ``prepare``) copies the
    conversation's entry from the store into the local map. :meth:`put`
    writes both, the store in a task of its own, so no request waits on it.
    A store that is down leaves each process with what it has seen itself.
    """

    PREFIX = "sticky:"

    def __init__(
        self,
        kv: KeyValueStore,
        *,
        ttl_s: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = MemorySessions(ttl_s=ttl_s, max_entries=max_entries, clock=clock)
        self.ttl_s = ttl_s
        self._kv = kv
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> Stuck | None:
        return self.local.get(key)

    def put(self, key: str, target: str) -> None:
        self.local.put(key, target)
        task = asyncio.get_running_loop().create_task(self._write(key, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load(self, key: str) -> None:
        if self.local.get(key) is not None:
            return
        try:
            target = await self._kv.get(self.PREFIX + key)
        except StateUnavailable as exc:
            log.debug("sticky sessions: store unavailable: %s", exc)
            return
        if target:
            self.local.put(key, target)

    async def _write(self, key: str, target: str) -> None:
        try:
            await self._kv.set(self.PREFIX + key, target, ttl_s=self.ttl_s)
        except StateUnavailable as exc:
            log.warning("sticky sessions: could not share a conversation's target: %s", exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    def __len__(self) -> int:
        return len(self.local)
