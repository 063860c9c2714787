"""distill.auto: a cycle runs once enough new rows are captured, never twice on the same rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_models.distill.store import DatasetStore
from service.distill_auto import AutoDistiller
from service.settings import AutoSettings


class Runner:
    """Plays ``hybrid-router distill cycle``: writes its result file like the real one."""

    def __init__(self, code: int = 0, promoted: bool = True, delay_s: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.code, self.promoted, self.delay_s = code, promoted, delay_s

    async def __call__(self, args: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(args))
        await asyncio.sleep(self.delay_s)
        if self.code == 0:
            result = Path(args[args.index("--result") + 1])
            result.parent.mkdir(parents=True, exist_ok=True)
            promoted = self.promoted and "--no-promote" not in args
            result.write_text(json.dumps({"version": "v1", "promoted": promoted}))  # noqa: ASYNC240 - a fake
        return self.code, "" if self.code == 0 else "training failed"


def fill(store: DatasetStore, start: int, count: int) -> None:
    for i in range(start, start + count):
        messages = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer"}]
        store.append({"messages": messages, "metadata": {"task": "t"}})


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "data", retention_days=None)


def auto(store: DatasetStore, tmp_path: Path, runner: Runner, counts: list[str], **settings: object) -> AutoDistiller:
    return AutoDistiller(
        AutoSettings(enabled=True, min_new_rows=50, **settings),  # type: ignore[arg-type]
        data_dir=store.root,
        registry_dir=tmp_path / "registry",
        count=counts.append,
        runner=runner,
    )


async def test_a_cycle_runs_once_enough_rows_are_new_and_not_again_on_the_same_rows(
    store: DatasetStore, tmp_path: Path
) -> None:
    runner, counts = Runner(), []
    distiller = auto(store, tmp_path, runner, counts, time_budget_s=600)
    fill(store, 0, 30)
    assert await distiller.check() is None

    fill(store, 30, 60)
    assert await distiller.check() == "promoted"
    registry = tmp_path / "registry"
    assert runner.calls == [["--data", str(store.root), "--registry", str(registry), "--time-budget", "600s",
                             "--result", str(registry / ".auto-result.json")]]  # fmt: skip

    assert await distiller.check() is None  # the same rows: not trained twice, even after a restart
    assert await auto(store, tmp_path, runner, counts).check() is None
    assert counts == ["promoted"]


async def test_a_failed_cycle_is_counted_and_retried_later(store: DatasetStore, tmp_path: Path) -> None:
    counts: list[str] = []
    fill(store, 0, 80)
    failing = auto(store, tmp_path, Runner(code=1), counts)

    assert await failing.check() == "failed"
    assert await auto(store, tmp_path, Runner(promoted=False), counts).check() == "kept"
    assert counts == ["failed", "kept"]


async def test_only_one_cycle_runs_at_a_time(store: DatasetStore, tmp_path: Path) -> None:
    runner, counts = Runner(delay_s=0.1), []
    fill(store, 0, 80)
    distiller = auto(store, tmp_path, runner, counts, promote=False)

    first, second = await asyncio.gather(distiller.check(), distiller.check())

    assert sorted(map(str, (first, second))) == ["None", "kept"]
    assert "--no-promote" in runner.calls[0]
    assert len(runner.calls) == 1
