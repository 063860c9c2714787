"""``hybrid-router serve --workers 2``: two processes on one port, one rate limit between them (SQLite)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.support.processes import ROOT, free_port, running


def children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's resource tracker is a child too, and not one)."""
    found = [int(part) for part in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in found if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def write_config(tmp_path: Path, url: str) -> Path:
    file = tmp_path / "workers.yaml"
    file.write_text(yaml.safe_dump({
        "targets": {"edge": {"type": "fake", "reply": "edge says hi", "delay_s": 0.05}},
        "policies": [{"type": "default", "target": "edge"}],
        "tenants": {"default": {"limits": {"requests_per_minute": 6}}},
        "state": {"url": url},
    }))  # fmt: skip
    return file


async def test_two_workers_serve_one_port_and_share_one_rate_limit(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port), "--workers", "2"]
    with running(args, port=port, ready_path="/readyz", log=tmp_path / "serve.log") as server:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(*(
                client.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
                for _ in range(12)
            ))  # fmt: skip
        workers = children(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=45) == 0

    assert len(workers) == 2
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) in (6, 7) and codes.count(429) == 12 - codes.count(200)
    assert not any(alive(pid) for pid in workers)


def test_workers_with_limits_refuse_a_store_of_their_own(tmp_path: Path) -> None:
    config = write_config(tmp_path, "memory://")
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(free_port()),
         "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "needs a shared state store" in done.stderr
