"""The dataset store: daily JSONL files, dedup, cap, retention, purge and stats."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_models.distill.rows import is_holdout, read_rows, row_hash
from edge_models.distill.store import CHANGE_MARK, DatasetStore, default_data_dir


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def row(question: str, answer: str = "an answer", **metadata: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    }
    if metadata:
        out["metadata"] = metadata
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 3, 10, 12, 0, tzinfo=UTC))


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> DatasetStore:
    return DatasetStore(tmp_path / "data", max_rows=1000, retention_days=None, clock=clock)


def test_rows_go_to_the_utc_day_file_with_full_metadata(store: DatasetStore, clock: Clock) -> None:
    clock.now = datetime(2025, 3, 10, 23, 30, tzinfo=UTC) + timedelta(hours=1)  # past midnight UTC

    assert store.append(row("q1", task="triage", target="cloud", model="gpt-x")) == "stored"

    [written] = lines(store.root / "2025-03-11.jsonl")
    assert written["messages"] == row("q1")["messages"]
    assert written["metadata"] == {
        "task": "triage",
        "route": None,
        "tenant": None,
        "target": "cloud",
        "model": "gpt-x",
        "captured_at": "2025-03-11T00:30:00Z",
        "hash": row_hash(row("q1")["messages"]),
        "holdout": is_holdout(row("q1")["messages"]),
    }


def test_the_file_is_valid_openai_fine_tuning_jsonl(store: DatasetStore) -> None:
    for i in range(5):
        store.append(row(f"q{i}"))

    assert [r["messages"] for r in read_rows(store.root)] == [row(f"q{i}")["messages"] for i in range(5)]


def test_duplicates_are_refused_across_days_and_after_a_restart(
    tmp_path: Path, store: DatasetStore, clock: Clock
) -> None:
    assert store.append(row("q1")) == "stored"
    clock.now += timedelta(days=1)
    assert store.append(row("q1", task="other")) == "duplicate"  # metadata does not make a row new
    assert store.append(row("q1", answer="another answer")) == "stored"

    restarted = DatasetStore(store.root, max_rows=100, retention_days=None, clock=clock)
    assert restarted.append(row("q1")) == "duplicate"
    assert restarted.count() == 2


def test_holdout_flag_follows_the_fixed_prompt_hash_slice(store: DatasetStore) -> None:
    for i in range(200):
        store.append(row(f"question {i}"))

    flagged = [r for r in read_rows(store.root) if r["metadata"]["holdout"]]
    assert flagged and len(flagged) < 60
    assert all(is_holdout(r["messages"]) for r in flagged)
    stats = store.stats()
    assert (stats.holdout_rows, stats.train_rows) == (len(flagged), 200 - len(flagged))


def test_the_cap_counts_rows_already_on_disk(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "imported.jsonl").write_text("".join(json.dumps(row(f"old {i}")) + "\n" for i in range(3)))
    store = DatasetStore(root, max_rows=4, retention_days=None, clock=clock)

    assert store.append(row("new 1")) == "stored"
    assert store.append(row("new 2")) == "full"
    assert store.append(row("old 0")) == "duplicate"


def test_retention_deletes_only_daily_files_older_than_the_limit(tmp_path: Path, clock: Clock) -> None:
    store = DatasetStore(tmp_path / "data", max_rows=100, retention_days=None, clock=clock)
    for day in range(4):
        clock.now = datetime(2025, 3, 1 + day, tzinfo=UTC)
        store.append(row(f"day {day}"))
    (store.root / "imported.jsonl").write_text(json.dumps(row("kept forever")) + "\n")

    clock.now = datetime(2025, 3, 5, tzinfo=UTC)
    store.retention_days = 2  # as a config reload sets it
    result = store.enforce_retention()

    assert (result.files_removed, result.rows_removed) == (2, 2)
    assert sorted(p.name for p in store.files()) == ["2025-03-03.jsonl", "2025-03-04.jsonl", "imported.jsonl"]


def test_retention_runs_on_its_own_once_a_day_when_appending(tmp_path: Path, clock: Clock) -> None:
    store = DatasetStore(tmp_path / "data", max_rows=100, retention_days=1, clock=clock)
    clock.now = datetime(2025, 3, 1, tzinfo=UTC)
    store.append(row("old"))
    clock.now = datetime(2025, 3, 10, tzinfo=UTC)

    assert store.append(row("old")) == "stored"  # the expired copy no longer counts as a duplicate
    assert [p.name for p in store.files()] == ["2025-03-10.jsonl"]


def test_purge_by_task_rewrites_files_and_keeps_other_rows(store: DatasetStore, clock: Clock) -> None:
    store.append(row("a", task="triage"))
    store.append(row("b", task="summary"))
    clock.now += timedelta(days=1)
    store.append(row("c", task="triage"))
    with (store.root / "2025-03-10.jsonl").open("a") as handle:
        handle.write("not json, kept as it is\n")

    result = store.purge(task="triage")

    assert (result.rows_removed, result.files_rewritten, result.files_removed) == (2, 1, 1)
    assert [p.name for p in store.files()] == ["2025-03-10.jsonl"]
    text = (store.root / "2025-03-10.jsonl").read_text()
    assert '"content":"b"' in text and "not json, kept as it is" in text
    assert not list(store.root.glob(".*.tmp"))
    assert store.append(row("a", task="triage")) == "stored"  # the index forgot the purged rows


def test_purge_before_a_day_and_by_task_within_those_days(store: DatasetStore, clock: Clock) -> None:
    for day in range(3):
        clock.now = datetime(2025, 3, 1 + day, tzinfo=UTC)
        store.append(row(f"t{day}", task="triage"))
        store.append(row(f"s{day}", task="summary"))

    only_task = store.purge(before=date(2025, 3, 2), task="triage")
    assert only_task.rows_removed == 1
    by_day = store.purge(before=date(2025, 3, 3))
    assert (by_day.files_removed, by_day.rows_removed) == (2, 3)
    assert [p.name for p in store.files()] == ["2025-03-03.jsonl"]


def test_purge_everything_and_purge_needs_a_criterion(store: DatasetStore) -> None:
    store.append(row("a"))
    with pytest.raises(ValueError, match="say what to purge"):
        store.purge()

    assert store.purge(everything=True).rows_removed == 1
    assert store.files() == []
    assert store.stats().rows == 0


def test_another_process_purging_makes_the_index_reload(store: DatasetStore, clock: Clock) -> None:
    store.append(row("a", task="triage"))
    other = DatasetStore(store.root, retention_days=None, clock=clock)

    other.purge(task="triage")

    assert (store.root / CHANGE_MARK).exists()
    assert store.append(row("a")) == "stored"


def test_stats_counts_rows_tasks_targets_days_and_bad_lines(store: DatasetStore, clock: Clock) -> None:
    store.append(row("a", task="triage", target="cloud"))
    store.append(row("b", task="triage", target="cloud"))
    clock.now += timedelta(days=2)
    store.append(row("c", target="other"))
    with (store.root / "2025-03-12.jsonl").open("a") as handle:
        handle.write("{broken\n")

    stats = store.stats()

    assert (stats.rows, stats.files, stats.skipped) == (3, 2, 1)
    assert (stats.oldest_day, stats.newest_day) == ("2025-03-10", "2025-03-12")
    assert stats.by_task == {"triage": 2, "(none)": 1}
    assert stats.by_target == {"cloud": 2, "other": 1}
    assert stats.bytes == sum(p.stat().st_size for p in store.files())
    assert stats.train_rows + stats.holdout_rows == 3


def test_a_truncated_last_line_does_not_swallow_the_next_row(store: DatasetStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / "2025-03-10.jsonl").write_text(json.dumps(row("whole")) + "\n" + '{"messages": [{"ro')

    assert store.append(row("next")) == "stored"

    assert [r["messages"][0]["content"] for r in read_rows(store.root)] == ["whole", "next"]


def test_invalid_rows_are_refused(store: DatasetStore) -> None:
    with pytest.raises(ValueError, match="last message is not the assistant"):
        store.append({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]})


def test_concurrent_appends_keep_every_line_whole_and_dedup(store: DatasetStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for i in range(50):
            # Every worker also writes the shared rows 0..9: exactly one copy of each must be stored.
            outcome = store.append(row(f"shared {i % 10}" if i < 10 else f"w{offset} q{i}", answer="x" * 2000))
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("stored") == 10 + 8 * 40
    assert outcomes.count("duplicate") == 7 * 10
    stored = lines(store.root / "2025-03-10.jsonl")
    assert len(stored) == 330
    assert len({r["metadata"]["hash"] for r in stored}) == 330


def test_files_are_private_to_the_user(store: DatasetStore) -> None:
    store.append(row("a"))
    assert (store.root / "2025-03-10.jsonl").stat().st_mode & 0o077 == 0


def test_default_folder_sits_beside_the_models(tmp_path: Path) -> None:
    assert default_data_dir(tmp_path / "models") == tmp_path / "distill" / "data"
