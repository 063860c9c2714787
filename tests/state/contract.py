"""Every state store the contract suite runs over, and what each declares it supports.

Like ``tests/backends/contract.py``: each :class:`StoreKind` says how to open a
fresh, isolated store (a new SQLite file, a new Redis namespace), whether a
second store object (another process) sees the same data (``shared``), and
how to read back everything it keeps as text (to prove a plain key never
lands there). ``tests/state/test_stores.py`` runs the same cases over all of
them; a store is done when the suite passes.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.state import MemoryState, RedisState, SQLiteState, StateStore

__all__ = ["KINDS", "FakeClock", "Place", "StoreKind"]

# 2026-03-31 23:00:00 UTC: an hour before both a day and a month end.
START = 1_774_998_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Place:
    """Where one test's data lives: a URL another process can open (None for memory) and a namespace."""

    url: str | None
    namespace: str
    path: Path | None = None


@dataclass(frozen=True)
class StoreKind:
    name: str
    shared: bool

    def __repr__(self) -> str:
        return self.name

    def place(self, tmp_path: Path, redis_url: Callable[[], str]) -> Place:
        namespace = f"test-{uuid.uuid4().hex[:12]}"
        if self.name == "sqlite":
            path = tmp_path / "state.db"
            return Place(f"sqlite:///{path}", namespace, path)
        if self.name == "redis":
            return Place(redis_url(), namespace)
        return Place(None, namespace)

    def open(self, place: Place, clock: Callable[[], float]) -> StateStore:
        """A store object over ``place``; for a shared kind, each call is another view of the same data."""
        if self.name == "sqlite":
            assert place.path is not None
            return SQLiteState(place.path, clock=clock)
        if self.name == "redis":
            assert place.url is not None
            return RedisState(place.url, namespace=place.namespace, clock=clock)
        return MemoryState(clock=clock)

    async def dump(self, place: Place, store: StateStore) -> str:
        """Everything the store keeps for this test, as text."""
        if self.name == "sqlite":
            assert place.path is not None
            with sqlite3.connect(place.path) as conn:
                return "\n".join(conn.iterdump())
        if self.name == "redis":
            async with _redis(place) as client:
                return await _redis_dump(client, place.namespace)
        assert isinstance(store, MemoryState)
        return store.dump()

    async def clean(self, place: Place) -> None:
        if self.name == "redis":
            async with _redis(place) as client:
                keys = [key async for key in client.scan_iter(f"{place.namespace}:*")]
                if keys:
                    await client.delete(*keys)


@asynccontextmanager
async def _redis(place: Place) -> AsyncIterator[Any]:
    import redis.asyncio

    assert place.url is not None
    client = redis.asyncio.Redis.from_url(place.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _redis_dump(client: Any, namespace: str) -> str:
    lines = []
    async for key in client.scan_iter(f"{namespace}:*"):
        kind = await client.type(key)
        if kind == "hash":
            value: object = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        else:
            value = await client.get(key)
        lines.append(f"{key} {kind} {value!r}")
    return "\n".join(lines)


KINDS = [StoreKind("memory", shared=False), StoreKind("sqlite", shared=True), StoreKind("redis", shared=True)]
