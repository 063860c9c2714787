"""The embedded store: one SQLite file in WAL mode, shared by every gateway process on the machine.

Each process holds one connection on one worker thread of its own; every
call is a coroutine that runs there (``run_in_executor``), so the event loop
never waits on the file's lock. A write that finds the file free runs
inline instead, on a second connection that never waits (see
:class:`_Database`): the request path's one write per request skips the
hop to the thread. Between processes, every write is a ``BEGIN IMMEDIATE`` transaction: it
takes the file's write lock before it reads, so a reservation's check and
its hold cannot interleave with another process's (no overshoot), and a
writer that finds the lock taken waits up to ``busy_timeout_s``. WAL lets
readers go on meanwhile; ``synchronous=NORMAL`` keeps the file consistent
through a crash and may lose the last moments of counts on a power cut.

A call cancelled while it waits still completes on the worker thread: a
hold whose reservation never reached its caller frees itself after its
``ttl_s``.

>>> import asyncio, tempfile
>>> from router.state.base import RateScope
>>> async def demo(path):
...     state = SQLiteState(path)
...     try:
...         return await state.rates.acquire([RateScope("key:a", requests_per_minute=1)], tokens=0)
...     finally:
...         await state.close()
>>> asyncio.run(demo(tempfile.mkdtemp() + "/state.db")).allowed
True
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from router.errors import StateUnavailable
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

__all__ = ["SQLiteState"]

T = TypeVar("T")
Clock = Callable[[], float]
Connection = sqlite3.Connection

SCHEMA_VERSION = 1
SWEEP_EVERY_S = 5.0
CHECKPOINT_EVERY = 200
SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_counters (
    name TEXT PRIMARY KEY, spent INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS budget_counters_expiry ON budget_counters (expires_at);
CREATE TABLE IF NOT EXISTS budget_holds (
    id TEXT NOT NULL, counter TEXT NOT NULL, amount INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (id, counter)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_holds_counter ON budget_holds (counter, expires_at);
CREATE INDEX IF NOT EXISTS budget_holds_expiry ON budget_holds (expires_at);
CREATE TABLE IF NOT EXISTS budget_finished (id TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_finished_expiry ON budget_finished (expires_at);
CREATE TABLE IF NOT EXISTS rate_buckets (
    name TEXT NOT NULL, bucket INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (name, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_keys (
    key_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_at REAL NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at);
"""


class _Busy(Exception):
    """The file's write lock is taken right now (another process, or this one's worker thread)."""


class _Database:
    """One connection on a worker thread, and one the event loop writes on when the file is free.

    An uncontended write (the request path's one per request) runs inline on
    the event loop's connection, which never waits: its ``BEGIN IMMEDIATE``
    either takes the write lock at once or fails, and then the write goes to
    the worker thread, whose connection waits up to ``busy_timeout_s``. That
    saves the hop to the thread (about 0.1 ms here) without ever blocking the
    loop on a lock. The loop's connection never checkpoints the WAL (that
    fsyncs); the worker thread does, every :data:`CHECKPOINT_EVERY` inline
    writes, and meanwhile writes queue on the thread.
    """

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="hybrid-router-state")
        self._conn: Connection | None = None
        self._inline: Connection | None = None
        self._inline_writes = 0
        self._checkpoint: Future[None] | None = None
        self._swept_at = -float("inf")

    def sweep_due(self, now: float) -> bool:
        """Whether to clear expired rows in the coming write: every few seconds, not on every request.

        Reads never depend on it (each filters on expiry); it only keeps the tables small.
        """
        if now - self._swept_at < SWEEP_EVERY_S:
            return False
        self._swept_at = now
        return True

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in autocommit mode: for single statements and reads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, work, False)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` inside ``BEGIN IMMEDIATE`` … ``COMMIT``: atomic across processes."""
        loop = asyncio.get_running_loop()
        if self._inline is not None:
            try:
                result = self._write_inline(self._inline, work)
            except _Busy:
                pass  # someone is writing: wait for the lock on the worker thread, not on the loop
            else:
                self._inline_writes += 1
                if self._inline_writes >= CHECKPOINT_EVERY and (self._checkpoint is None or self._checkpoint.done()):
                    # Submitted straight to the thread: inline writes need not yield to the loop for it to start.
                    self._inline_writes = 0
                    self._checkpoint = self._executor.submit(self._run_checkpoint)
                return result
        result = await loop.run_in_executor(self._executor, self._call, work, True)
        if self._inline is None:
            # The schema is in place now (the worker's connection made it): open the loop's connection.
            self._inline = await loop.run_in_executor(self._executor, self._connect_inline)
        return result

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    def _write_inline(self, conn: Connection, work: Callable[[Connection], T]) -> T:
        with _translated(self.path):
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                    raise _Busy from None
                raise
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _call(self, work: Callable[[Connection], T], immediate: bool) -> T:
        with _translated(self.path):
            conn = self._conn or self._connect()
            if not immediate:
                return work(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _connect_inline(self) -> Connection | None:
        try:
            # Made on the worker thread (connecting touches the file), used only on the loop's thread after.
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error:
            return None  # every write keeps going to the worker thread
        return conn

    def _run_checkpoint(self) -> None:
        if self._conn is None:
            return
        # TRUNCATE holds writers off (the loop's inline writes find the file busy and queue here behind
        # it) until the WAL is copied back and emptied; a PASSIVE one never finishes under steady writes,
        # and the WAL would grow without end. A failure leaves it to the next one.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _connect(self) -> Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _use_wal(self, conn: Connection) -> None:
        """Switch the file to WAL once; another process connecting at the same moment may hold it briefly.

        Changing the journal mode does not wait through the busy handler, so it is retried here; a file
        already in WAL (every connection after the first) needs no change at all.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                if str(_one(conn, "PRAGMA journal_mode")).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateUnavailable(
                f"{self.path} holds state schema {version}; this version of hybrid-router knows up to "
                f"{SCHEMA_VERSION}: upgrade it, or point state at another file"
            )
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StateUnavailable(f"state store {path}: {exc}") from exc


def _one(conn: Connection, sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


class SQLiteBudgets:
    """Counters, holds and finished reservations in three tables."""

    def __init__(self, db: _Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def reserve(
        self, scopes: list[BudgetScope], amount_usd: float, *, request_id: str, ttl_s: float
    ) -> Reservation | BudgetExceeded:
        now, amount = self._clock(), to_micros(amount_usd)
        plan = budget_plan(scopes, now=now)
        hold = new_hold(plan, amount, request_id, now + ttl_s)
        sweep = self._db.sweep_due(now)
        reserve = functools.partial(_reserve, plan=plan, hold=hold, amount=amount, now=now, sweep=sweep)
        return await self._db.write(reserve)

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        finish = functools.partial(_finish, reservation=reservation, charge=to_micros(actual_usd), now=self._clock())
        return await self._db.write(finish)

    async def release(self, reservation: Reservation) -> bool:
        return await self._db.write(functools.partial(_finish, reservation=reservation, charge=0, now=self._clock()))

    async def usage(self, scope: BudgetScope) -> BudgetUsage:
        now = self._clock()
        name = counter_for(scope, now=now).name

        return await self._db.run(lambda conn: _usage(conn, scope, name, now))


def _usage(conn: Connection, scope: BudgetScope, name: str, now: float) -> BudgetUsage:
    spent = _one(conn, "SELECT spent FROM budget_counters WHERE name = ? AND expires_at > ?", name, now)
    return BudgetUsage(to_usd(spent or 0), to_usd(_held(conn, name, now)), scope.limit_usd)


def _reserve(
    conn: Connection, *, plan: list[BudgetCharge], hold: Reservation, amount: int, now: float, sweep: bool
) -> Reservation | BudgetExceeded:
    if sweep:
        _sweep(conn, now)
    return _budget_check(conn, plan, amount, now) or _budget_place(conn, plan, hold, amount)


def _budget_check(conn: Connection, plan: list[BudgetCharge], amount: int, now: float) -> BudgetExceeded | None:
    for item in plan:
        spent = _one(conn, "SELECT spent FROM budget_counters WHERE name = ?", item.counter.name) or 0
        held = _held(conn, item.counter.name, now)
        if spent + held + amount > item.limit:
            return refusal(item, spent, held)
    return None


def _budget_place(conn: Connection, plan: list[BudgetCharge], hold: Reservation, amount: int) -> Reservation:
    for item in plan:
        conn.execute(
            "INSERT OR IGNORE INTO budget_counters VALUES (?, 0, ?)",
            (item.counter.name, item.counter.ends_at + COUNTER_GRACE_S),
        )
        conn.execute(
            "INSERT INTO budget_holds VALUES (?, ?, ?, ?)", (hold.id, item.counter.name, amount, hold.expires_at)
        )
    return hold


def _finish(conn: Connection, *, reservation: Reservation, charge: int, now: float) -> bool:
    if _one(conn, "SELECT 1 FROM budget_finished WHERE id = ? AND expires_at > ?", reservation.id, now):
        return False
    conn.execute("DELETE FROM budget_holds WHERE id = ?", (reservation.id,))
    # A counter past its window and grace is gone (swept): nobody reads it any more.
    conn.executemany(
        "UPDATE budget_counters SET spent = spent + ? WHERE name = ?", [(charge, name) for name in reservation.charges]
    )
    conn.execute("INSERT OR REPLACE INTO budget_finished VALUES (?, ?)", (reservation.id, now + FINISHED_TTL_S))
    return True


def _held(conn: Connection, name: str, now: float) -> int:
    return int(_one(conn, "SELECT SUM(amount) FROM budget_holds WHERE counter = ? AND expires_at > ?", name, now) or 0)


def _sweep(conn: Connection, now: float) -> None:
    for table in ("budget_holds", "budget_counters", "budget_finished"):
        conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
    # Only the current and the previous minute are ever read.
    conn.execute("DELETE FROM rate_buckets WHERE bucket < ?", (bucket_of(now)[0] - 1,))


class SQLiteRates:
    """Rate buckets as rows of (counter, minute, count)."""

    def __init__(self, db: _Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def acquire(self, scopes: list[RateScope], *, tokens: int) -> RateDecision:
        plan = rate_plan(scopes, tokens=tokens)
        if not plan:
            return RateDecision(True)
        now = self._clock()
        bucket, elapsed = bucket_of(now)
        sweep = self._db.sweep_due(now)

        def check_and_count(conn: Connection) -> RateDecision:
            if sweep:
                _sweep(conn, now)
            decision = _rate_check(conn, plan, bucket, elapsed)
            if decision.allowed:
                _add(conn, plan, bucket)
            return decision

        return await self._db.write(check_and_count)

    async def record(self, scopes: list[RateScope], *, tokens: int) -> None:
        plan = rate_plan(scopes, tokens=tokens, requests=0)
        if plan:
            bucket = bucket_of(self._clock())[0]
            await self._db.write(lambda conn: _add(conn, plan, bucket))

    async def give_back(self, scopes: list[RateScope], *, requests: int, tokens: int, at: float) -> None:
        plan, bucket = rate_plan(scopes, tokens=tokens, requests=requests), bucket_of(at)[0]

        def uncount(conn: Connection) -> None:
            for item in plan:
                conn.execute(
                    "UPDATE rate_buckets SET count = MAX(0, count - ?) WHERE name = ? AND bucket = ?",
                    (item.cost, item.name, bucket),
                )

        if plan:
            await self._db.write(uncount)


def _rate_check(conn: Connection, plan: list[RateCounter], bucket: int, elapsed: int) -> RateDecision:
    counts = [(_count(conn, c.name, bucket - 1), _count(conn, c.name, bucket)) for c in plan]
    return decide(plan, counts, elapsed)


def _count(conn: Connection, name: str, bucket: int) -> int:
    return int(_one(conn, "SELECT count FROM rate_buckets WHERE name = ? AND bucket = ?", name, bucket) or 0)


def _add(conn: Connection, plan: list[RateCounter], bucket: int) -> None:
    for item in plan:
        conn.execute(
            "INSERT INTO rate_buckets VALUES (?, ?, ?) ON CONFLICT (name, bucket) DO UPDATE SET count = count + ?",
            (item.name, bucket, item.cost, item.cost),
        )


class SQLiteKeys:
    """Key records as JSON rows, by hash."""

    def __init__(self, db: _Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

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

        def insert(conn: Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO client_keys VALUES (?, ?, ?, ?)",
                    (key_hash, tenant, record.created_at, key_to_json(record)),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"a key with hash {key_hash[:15]}… already exists") from None

        await self._db.run(insert)
        return record

    async def get(self, key_hash: str) -> KeyRecord | None:
        text = await self._db.run(
            lambda conn: _one(conn, "SELECT record FROM client_keys WHERE key_hash = ?", key_hash)
        )
        return None if text is None else key_from_json(text)

    async def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        sql = "SELECT record FROM client_keys WHERE ? IS NULL OR tenant = ? ORDER BY created_at, key_hash"
        rows = await self._db.run(lambda conn: conn.execute(sql, (tenant, tenant)).fetchall())
        return [key_from_json(text) for (text,) in rows]

    async def revoke(self, key_hash: str) -> bool:
        def mark(conn: Connection) -> bool:
            text = _one(conn, "SELECT record FROM client_keys WHERE key_hash = ?", key_hash)
            if text is None or (record := key_from_json(text)).revoked:
                return False
            revoked = key_to_json(dataclasses.replace(record, revoked=True))
            conn.execute("UPDATE client_keys SET record = ? WHERE key_hash = ?", (revoked, key_hash))
            return True

        return await self._db.write(mark)


class SQLiteKeyValues:
    """Values with an optional expiry time."""

    def __init__(self, db: _Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, key: str) -> str | None:
        now = self._clock()
        sql = "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
        value: str | None = await self._db.run(lambda conn: _one(conn, sql, key, now))
        return value

    async def set(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        now = self._clock()
        expires_at = None if ttl_s is None else now + ttl_s

        def put(conn: Connection) -> None:
            conn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires_at))

        await self._db.write(put)

    async def delete(self, key: str) -> None:
        await self._db.run(lambda conn: conn.execute("DELETE FROM kv WHERE key = ?", (key,)))


class SQLiteAdmissions:
    """Rate windows and budgets in one ``BEGIN IMMEDIATE`` transaction per request and one per completion."""

    def __init__(self, db: _Database, clock: Clock) -> None:
        self._db = db
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
        hold = new_hold(charges, amount, request_id, now + ttl_s)
        sweep = self._db.sweep_due(now)

        def admit(conn: Connection) -> Admitted:
            if sweep:
                _sweep(conn, now)
            decision = _rate_check(conn, plan, bucket, elapsed) if plan else RateDecision(True)
            if not decision.allowed:
                return Admitted(decision)
            refused = _budget_check(conn, charges, amount, now) if charges else None
            if refused is not None:
                return Admitted(decision, refused)
            _add(conn, plan, bucket)
            return Admitted(decision, _budget_place(conn, charges, hold, amount) if charges else None)

        if not plan and not charges:
            return Admitted(RateDecision(True))
        return await self._db.write(admit)

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
        names = [counter_for(scope, now=now).name for scope in budgets]
        charge = to_micros(actual_usd)

        def complete(conn: Connection) -> list[BudgetUsage]:
            if hold is not None:
                _finish(conn, reservation=hold, charge=charge, now=now)
            _add(conn, plan, bucket)
            return [_usage(conn, scope, name, now) for scope, name in zip(budgets, names, strict=True)]

        return await self._db.write(complete)


class SQLiteState:
    """Budgets, rate windows, keys and values in one SQLite file (created, with its folder, on first use).

    Build it inside the process that uses it (after a fork, in the lifespan):
    a connection must not cross processes. ``clock``: epoch seconds.
    """

    def __init__(self, path: str | Path, *, clock: Clock = time.time, busy_timeout_s: float = 5.0) -> None:
        self._db = _Database(Path(path), busy_timeout_s)
        self.budgets = SQLiteBudgets(self._db, clock)
        self.rates = SQLiteRates(self._db, clock)
        self.keys = SQLiteKeys(self._db, clock)
        self.kv = SQLiteKeyValues(self._db, clock)
        self.admissions = SQLiteAdmissions(self._db, clock)

    @property
    def path(self) -> Path:
        return self._db.path

    async def close(self) -> None:
        await self._db.close()
