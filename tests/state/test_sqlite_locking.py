"""SQLite's inline writes: taken on the event loop only when the file is free, never waiting there for a lock."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path

from router.state import BudgetScope, Reservation, SQLiteState


async def test_a_write_that_finds_the_file_locked_waits_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    scope = BudgetScope("tenant:acme", "day", 1.0)
    try:
        first = await store.admissions.admit([], [scope], tokens=0, amount_usd=0.1, request_id="a", ttl_s=60)
        assert isinstance(first.hold, Reservation)  # the loop's own connection is open from here on

        other = sqlite3.connect(path, isolation_level=None)  # another process, as far as locks go
        other.execute("BEGIN IMMEDIATE")
        ticks: list[float] = []

        async def ticker() -> None:
            for _ in range(50):
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        started = time.perf_counter()
        admitting = asyncio.ensure_future(
            store.admissions.admit([], [scope], tokens=0, amount_usd=0.1, request_id="b", ttl_s=60)
        )
        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.5)
        assert not admitting.done()  # it waits for the lock...
        other.execute("COMMIT")
        other.close()
        second = await admitting
        await ticking

        assert isinstance(second.hold, Reservation)
        assert time.perf_counter() - started >= 0.5
        # ...without holding up the loop: the ticker kept its 10 ms pace while the write waited.
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert max(gaps) < 0.3  # a loop blocked on the lock would show one gap of 0.5 s
        assert (await store.budgets.usage(scope)).held_usd == 0.2
    finally:
        await store.close()


async def test_many_inline_writes_keep_the_wal_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    scope = BudgetScope("tenant:acme", "day", 10**6)
    try:
        for i in range(1500):
            admitted = await store.admissions.admit([], [scope], tokens=0, amount_usd=0.01, request_id=str(i), ttl_s=60)
            assert isinstance(admitted.hold, Reservation)
            await store.admissions.complete(admitted.hold, 0.01, [], tokens=0, budgets=[])
        await asyncio.sleep(0.2)  # the last checkpoint, on the worker thread
        # Without checkpoints the WAL would hold every page written: thousands. Checkpointed, it is reused.
        wal_pages = (tmp_path / "state.db-wal").stat().st_size // 4096
        assert wal_pages < 1500, wal_pages
        assert (await store.budgets.usage(scope)).spent_usd == 15.0
    finally:
        await store.close()
