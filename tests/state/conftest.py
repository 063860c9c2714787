"""Fixtures of the state-store suite: the store kinds, a fake clock, and a Redis server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from router.state import StateStore
from tests.state.contract import KINDS, FakeClock, Place, StoreKind
from tests.support.processes import free_port

REDIS_URL_ENV = "HYBRID_ROUTER_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$HYBRID_ROUTER_TEST_REDIS_URL``, else a ``redis-server`` from PATH on a free port for the session.

    A missing server fails the tests that need it, loudly: a skipped Redis
    test would let the Redis store drift unseen.
    """
    given = os.environ.get(REDIS_URL_ENV)
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            f"redis-server is not on PATH and ${REDIS_URL_ENV} is not set: the Redis state-store tests need one. "
            "Install it (`apt-get install redis-server`; .ci/run does) or point the variable at a server.",
            pytrace=False,
        )
    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_pong(port, process, folder / "redis.log")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_pong(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"redis-server did not answer on port {port} within {timeout:.0f}s")
        time.sleep(0.05)


@pytest.fixture(params=KINDS, ids=repr)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    chosen: StoreKind = request.param
    return chosen


@pytest.fixture(params=[k for k in KINDS if k.shared], ids=repr)
def shared_kind(request: pytest.FixtureRequest) -> StoreKind:
    chosen: StoreKind = request.param
    return chosen


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _place(kind: StoreKind, request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    # Redis starts only for the tests that use it.
    return kind.place(tmp_path, lambda: str(request.getfixturevalue("redis_server")))


@pytest.fixture
async def place(kind: StoreKind, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    where = _place(kind, request, tmp_path)
    yield where
    await kind.clean(where)


@pytest.fixture
async def store(kind: StoreKind, place: Place, clock: FakeClock) -> AsyncIterator[StateStore]:
    opened = kind.open(place, clock)
    yield opened
    await opened.close()


@pytest.fixture
async def shared_place(shared_kind: StoreKind, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    where = _place(shared_kind, request, tmp_path)
    yield where
    await shared_kind.clean(where)
