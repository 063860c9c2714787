"""``distill.auto``: the loop on a schedule, inside a running gateway.

Every ``check_every_s`` the gateway looks at the capture store; once it holds
``min_new_rows`` training rows more than the last cycle trained on, it runs
``hybrid-router distill cycle`` (train, judge against the serving model,
promote if it won) as a child process at low priority, so torch never loads in
the gateway and serving goes on. A promotion rewrites the registry pointer,
and the edge target swaps live (router/backends/edge.py). At most one cycle
runs at a time; the outcome is logged and counted
(``hybrid_router_distill_cycles_total{outcome}``: promoted, kept, failed).

What the last cycle trained on is kept in the registry folder
(``auto.json``), so a restart does not train again on the same rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from edge_models.distill.manifest import write_json_atomic
from edge_models.distill.store import DatasetStore
from service.settings import AutoSettings

__all__ = ["AutoDistiller", "AutoSettings", "run_cycle_process"]

log = logging.getLogger("hybrid_router.distill")

STATE_FILE = "auto.json"

CycleRunner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]
"""Runs ``hybrid-router distill cycle`` with these arguments; (exit code, last lines of output).
The cycle writes its result JSON to the ``--result`` file it is given."""


async def run_cycle_process(args: Sequence[str]) -> tuple[int, str]:
    """``python -m service.cli distill cycle ARGS`` in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "distill", "cycle", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    return int(proc.returncode or 0), "\n".join(output.decode(errors="replace").splitlines()[-5:])


def _promoted(result: Path) -> bool:
    try:
        return bool(json.loads(result.read_text()).get("promoted"))
    except (OSError, ValueError, AttributeError):
        return False


class AutoDistiller:
    """Watches the capture store and runs a cycle when enough new rows have come in."""

    def __init__(
        self,
        settings: AutoSettings,
        *,
        data_dir: Path,
        registry_dir: Path,
        count: Callable[[str], None] | None = None,
        runner: CycleRunner = run_cycle_process,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.registry_dir = registry_dir
        self._count = count or (lambda outcome: None)
        self._runner = runner
        self._task: asyncio.Task[None] | None = None
        self.running = False

    def trained_rows(self) -> int:
        try:
            return int(json.loads((self.registry_dir / STATE_FILE).read_text())["train_rows"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0

    def new_rows(self) -> int:
        if not self.data_dir.is_dir():
            return 0
        rows = DatasetStore(self.data_dir, retention_days=None).stats().train_rows
        return rows - self.trained_rows()

    async def check(self) -> str | None:
        """One look: run a cycle if due. The outcome (promoted, kept, failed), or None when not due."""
        if self.running:
            return None
        # Claimed before the first await, so two checks never both start a cycle.
        self.running = True
        try:
            new = await asyncio.to_thread(self.new_rows)
            if new < self.settings.min_new_rows:
                return None
            started = time.perf_counter()
            total = self.trained_rows() + new
            log.info("distill.auto: %d new training rows; running a cycle", new)
            result = self.registry_dir / ".auto-result.json"
            args = ["--data", str(self.data_dir), "--registry", str(self.registry_dir),
                    "--time-budget", f"{self.settings.time_budget_s:g}s", "--result", str(result)]  # fmt: skip
            if not self.settings.promote:
                args.append("--no-promote")
            code, tail = await self._runner(args)
        finally:
            self.running = False
        if code != 0:
            outcome = "failed"
            log.warning("distill.auto: the cycle failed (exit %d): %s", code, tail)
        else:
            outcome = "promoted" if _promoted(result) else "kept"
            self.registry_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.registry_dir / STATE_FILE, {"train_rows": total, "at": time.time()})
            log.info("distill.auto: cycle done in %.0fs: %s", time.perf_counter() - started, outcome)
        self._count(outcome)
        return outcome

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_every_s)
            try:
                await self.check()
            except (OSError, ValueError) as exc:
                log.warning("distill.auto: could not check the capture store: %s", exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
