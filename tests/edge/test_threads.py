"""How many threads the edge model takes: the affinity mask, capped by a container's CPU limit."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from edge_models.runtime import cpu_limit, default_threads


@pytest.mark.parametrize(
    ("content", "expected"),
    [("150000 100000\n", 1.5), ("200000 100000", 2.0), ("max 100000\n", None), ("garbage", None), ("", None)],
)
def test_the_cgroup_cpu_limit_is_quota_over_period(tmp_path: Path, content: str, expected: float | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(content)
    assert cpu_limit(path) == expected
    assert cpu_limit(tmp_path / "missing") is None


def test_a_container_limit_caps_the_threads_the_node_shows(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    path.write_text("50000 100000")  # half a CPU: still one thread
    assert default_threads(path) == 1
    path.write_text("max 100000")
    assert default_threads(path) == cores
    path.write_text(f"{(cores + 8) * 100000} 100000")  # a limit above the cores changes nothing
    assert default_threads(path) == cores


async def test_the_inbox_keeps_order_and_wakes_the_loop_once_per_burst() -> None:
    from router.backends.edge import _Inbox

    loop = asyncio.get_running_loop()
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return real(callback, *args)

    inbox = _Inbox(loop)
    got: list[tuple[str, int]] = []
    with mock.patch.object(loop, "call_soon_threadsafe", counting):
        # A decode step's burst: one piece per row, then one row's end, all from the engine's thread.
        def step() -> None:
            for i in range(8):
                inbox.put(lambda v: got.append(("piece", v)), i)
            inbox.put(lambda v: got.append(("done", v)), 8)

        for _ in range(2):
            engine = threading.Thread(target=step)
            engine.start()
            engine.join()
            for _ in range(3):
                await asyncio.sleep(0)
    assert got == ([("piece", i) for i in range(8)] + [("done", 8)]) * 2
    assert wakeups == 2
