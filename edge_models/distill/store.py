"""The dataset store: captured rows in daily JSONL files, deduplicated, capped and expired.

Layout, under the store's folder (default ``~/.cache/hybrid-router/distill/data``)::

    2025-03-01.jsonl     one row a line, in OpenAI's chat fine-tuning format (:mod:`.rows`),
    2025-03-02.jsonl     the file named by the UTC day the row was captured
    imported.jsonl       any other ``*.jsonl`` dropped here counts too (deduplicated, capped),
                         but only daily files expire
    .changed             touched by every purge, so a gateway writing here reloads its index

Each stored row's ``metadata`` carries ``hash`` (:func:`~.rows.row_hash`),
``captured_at``, ``task``, ``route``, ``tenant``, ``target``, ``model`` and
``holdout`` (:func:`~.rows.is_holdout`: the permanent slice never trained on).

Appends are one ``write`` of a whole line to a file opened for appending, so
a reader, another writer or a crash never sees half a row; a line left
truncated by a crash is closed before the next row. A purge by task rewrites
each file beside itself and replaces it, so a reader sees the old file or the
new one. One store object is safe to share between threads.

>>> import tempfile
>>> store = DatasetStore(Path(tempfile.mkdtemp()), max_rows=10, retention_days=None)
>>> row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
>>> store.append(row), store.append(row), store.stats().rows
('stored', 'duplicate', 1)
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from edge_models.catalog import default_models_dir
from edge_models.distill.rows import ReadReport, check_row, is_holdout, read_rows, row_hash

__all__ = [
    "CHANGE_MARK",
    "METADATA_KEYS",
    "AppendOutcome",
    "DatasetStore",
    "PurgeResult",
    "StoreStats",
    "default_data_dir",
]

AppendOutcome = Literal["stored", "duplicate", "full"]

CHANGE_MARK = ".changed"
"""Replaced by every purge, so that other processes' stores reload their index."""

METADATA_KEYS = ("task", "route", "tenant", "target", "model")
"""Metadata every stored row has (None when unknown), besides ``hash``, ``captured_at`` and ``holdout``."""

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_NONE = "(none)"


def default_data_dir(models_dir: Path | None = None) -> Path:
    """``<models dir>/../distill/data``: ``~/.cache/hybrid-router/distill/data`` by default."""
    return (models_dir or default_models_dir()).parent / "distill" / "data"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def day_of(path: Path) -> date | None:
    """The day a daily file (``YYYY-MM-DD.jsonl``) holds; None for any other file."""
    if not _DAY.fullmatch(path.stem):
        return None
    try:
        return date.fromisoformat(path.stem)
    except ValueError:
        return None


@dataclass(frozen=True)
class StoreStats:
    """What a store holds. ``by_task`` and ``by_target`` count rows without one under ``"(none)"``."""

    rows: int
    train_rows: int
    holdout_rows: int
    files: int
    bytes: int
    oldest_day: str | None
    newest_day: str | None
    by_task: dict[str, int] = field(default_factory=dict)
    by_target: dict[str, int] = field(default_factory=dict)
    # Lines that are not trainable rows, and rows seen twice (e.g. in an imported file).
    skipped: int = 0
    duplicates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PurgeResult:
    """What a purge (or retention) removed."""

    files_removed: int = 0
    files_rewritten: int = 0
    rows_removed: int = 0

    def __add__(self, other: PurgeResult) -> PurgeResult:
        return PurgeResult(
            self.files_removed + other.files_removed,
            self.files_rewritten + other.files_rewritten,
            self.rows_removed + other.rows_removed,
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DatasetStore:
    """Captured rows under ``root``: at most ``max_rows``, daily files kept ``retention_days`` (None: forever).

    ``max_rows`` and ``retention_days`` may be changed on a live store (a
    config reload). ``clock`` returns the time now, timezone-aware.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_rows: int = 100_000,
        retention_days: int | None = 30,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.root = Path(root)
        self.max_rows = max_rows
        self.retention_days = retention_days
        self._clock = clock
        self._lock = threading.Lock()
        self._index: set[str] | None = None
        self._mark: tuple[int, int] | None = None
        self._retained_on: date | None = None
        self._tails_checked: set[Path] = set()

    # Writing

    def append(self, row: Mapping[str, Any]) -> AppendOutcome:
        """Store ``row`` in today's file unless it is a duplicate or the store is full.

        ``row`` is ``{"messages": [...], "metadata": {...}}`` with string
        contents ending in the assistant's answer; ``metadata`` may carry
        :data:`METADATA_KEYS`, the rest is filled in here.
        """
        why = check_row(row)
        if why is not None:
            raise ValueError(f"not a trainable row: {why}")
        now = self._clock().astimezone(UTC)
        messages = row["messages"]
        digest = row_hash(messages)
        with self._lock:
            self._refresh(now.date())
            assert self._index is not None
            if digest in self._index:
                return "duplicate"
            if len(self._index) >= self.max_rows:
                return "full"
            given = row.get("metadata") or {}
            metadata = {key: given.get(key) for key in METADATA_KEYS}
            metadata.update(given)
            metadata.setdefault("captured_at", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
            metadata["hash"] = digest
            metadata["holdout"] = is_holdout(messages)
            line = json.dumps({"messages": messages, "metadata": metadata}, ensure_ascii=False, separators=(",", ":"))
            self._write(self.root / f"{now.date().isoformat()}.jsonl", line.encode() + b"\n")
            self._index.add(digest)
            return "stored"

    def count(self) -> int:
        """Rows stored (distinct), as the cap counts them."""
        with self._lock:
            self._refresh(self._clock().astimezone(UTC).date())
            assert self._index is not None
            return len(self._index)

    def enforce_retention(self) -> PurgeResult:
        """Delete the daily files older than ``retention_days``."""
        with self._lock:
            return self._retain(self._clock().astimezone(UTC).date())

    def purge(self, *, before: date | None = None, task: str | None = None, everything: bool = False) -> PurgeResult:
        """Remove rows: every file (``everything``), or the daily files before ``before``, or the rows of ``task``.

        With both ``before`` and ``task``, only that task's rows in files
        before that day go. Files filtered by task are rewritten atomically;
        a file left without rows is deleted.
        """
        if not everything and before is None and task is None:
            raise ValueError("say what to purge: before, task or everything")
        with self._lock:
            return self._purge(None if everything else before, None if everything else task)

    # Reading

    def files(self) -> list[Path]:
        """The store's ``*.jsonl`` files, oldest day first (other files after the daily ones)."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("*.jsonl"), key=lambda p: (day_of(p) is None, p.name))

    def stats(self) -> StoreStats:
        with self._lock:
            files = self.files()
            report = ReadReport()
            tasks: Counter[str] = Counter()
            targets: Counter[str] = Counter()
            holdout = 0
            for row in read_rows(files, report):
                metadata = row.get("metadata") or {}
                tasks[str(metadata.get("task") or _NONE)] += 1
                targets[str(metadata.get("target") or _NONE)] += 1
                holdout += is_holdout(row["messages"])
            days = sorted(d.isoformat() for p in files if (d := day_of(p)) is not None)
            return StoreStats(
                rows=report.rows,
                train_rows=report.rows - holdout,
                holdout_rows=holdout,
                files=len(files),
                bytes=sum(p.stat().st_size for p in files),
                oldest_day=days[0] if days else None,
                newest_day=days[-1] if days else None,
                by_task=dict(tasks.most_common()),
                by_target=dict(targets.most_common()),
                skipped=report.skipped,
                duplicates=report.duplicates,
            )

    # Internals, called with the lock held

    def _refresh(self, today: date) -> None:
        """Load the index once (again after another process purged), and expire old files once a day."""
        mark = self._read_mark()
        if self._index is not None and mark != self._mark:
            self._index = None
        if self._retained_on != today:
            self._retain(today)
            self._retained_on = today
        if self._index is None:
            self._mark = self._read_mark()
            self._index = {row_hash(row["messages"]) for row in read_rows(self.files(), dedupe=False)}

    def _retain(self, today: date) -> PurgeResult:
        if self.retention_days is None:
            return PurgeResult()
        return self._purge(today - timedelta(days=self.retention_days), None)

    def _purge(self, before: date | None, task: str | None) -> PurgeResult:
        result = PurgeResult()
        for path in self.files():
            if before is not None and not ((day := day_of(path)) is not None and day < before):
                continue
            result += self._drop(path) if task is None else self._filter(path, task)
        if result.files_removed or result.files_rewritten:
            self._index = None
            self._touch_mark()
            self._mark = self._read_mark()
            self._tails_checked.clear()
        return result

    def _drop(self, path: Path) -> PurgeResult:
        rows = sum(1 for line in _lines(path) if line.strip())
        path.unlink(missing_ok=True)
        return PurgeResult(files_removed=1, rows_removed=rows)

    def _filter(self, path: Path, task: str) -> PurgeResult:
        kept: list[bytes] = []
        removed = 0
        for line in _lines(path):
            if not line.strip():
                continue
            if _task_of_line(line) == task:
                removed += 1
            else:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
        if not removed:
            return PurgeResult()
        if not kept:
            path.unlink(missing_ok=True)
            return PurgeResult(files_removed=1, rows_removed=removed)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(b"".join(kept))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return PurgeResult(files_rewritten=1, rows_removed=removed)

    def _write(self, path: Path, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path not in self._tails_checked:
            # A crash may have left a half-written last line: end it, so this row is not glued onto it.
            if _ends_unterminated(path):
                data = b"\n" + data
            self._tails_checked.add(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _read_mark(self) -> tuple[int, int] | None:
        try:
            st = (self.root / CHANGE_MARK).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _touch_mark(self) -> None:
        mark = self.root / CHANGE_MARK
        tmp = mark.with_name(f"{CHANGE_MARK}.{os.getpid()}.tmp")
        tmp.write_text(self._clock().isoformat() + "\n")
        os.replace(tmp, mark)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            yield from handle
    except FileNotFoundError:
        return


def _task_of_line(line: bytes) -> str | None:
    try:
        row: Any = json.loads(line)
    except ValueError:
        return None
    metadata = row.get("metadata") if isinstance(row, dict) else None
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return task if isinstance(task, str) else None


def _ends_unterminated(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False
