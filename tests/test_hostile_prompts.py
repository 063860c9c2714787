"""One hostile prompt must not stall the gateway: a real server keeps answering /healthz while they are classified.

Before the detectors were made linear, a 60 KB run of base64 letters ending
in padding kept ``/healthz`` from answering for over 10 s. Here four threads
send such prompts (and other adversarial shapes) to ``/v1/route`` while the
test probes ``/healthz``. The bound is generous for a shared CI machine
(``bench/hostile_prompts.py`` measures the real numbers); a stall is 50x it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Server, free_port, running

pytestmark = pytest.mark.slow

CONFIG = """
targets:
  edge: {type: fake, reply: "edge says hi", context_window: 2048}
  cloud: {type: fake, reply: "cloud says hi", local: false}
policies:
  - {type: privacy, on_personal_data: redact}
  - {type: default, target: cloud}
logging: {level: WARNING}
"""

SIZE = 60 * 1024
HOSTILE = [
    "A" * SIZE + "==",
    "aB3+/9zQ" * (SIZE // 8) + "=",
    "eyJ" * (SIZE // 3),
    "1 " * (SIZE // 2),
    "Mr. Aa " * (SIZE // 7),
    "12 Aa " * (SIZE // 6),
    "password= " * (SIZE // 10),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(args, port=port, ready_path="/healthz", log=Path(folder) / "server.log") as server:
        yield server


def test_healthz_keeps_answering_while_hostile_prompts_are_classified(gateway: Server) -> None:
    stop = threading.Event()
    decisions: list[dict[str, object]] = []

    def attack(offset: int) -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            index = offset
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": HOSTILE[index % len(HOSTILE)]}]}
                response = client.post("/v1/route", json=body)
                assert response.status_code == 200
                decisions.append(response.json())
                index += 1

    attackers = [threading.Thread(target=attack, args=(i,)) for i in range(4)]
    for thread in attackers:
        thread.start()
    probes: list[float] = []
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                probes.append(time.perf_counter() - started)
                time.sleep(0.02)
    finally:
        stop.set()
        for thread in attackers:
            thread.join()

    assert len(decisions) >= 8, "the hostile requests themselves were answered"
    assert max(probes) < 2.0, f"/healthz took {max(probes):.2f} s while hostile prompts were classified"
    # Every hostile request was either scanned or failed closed: none was waved through unscanned.
    for decision in decisions:
        personal = decision["features"]["personal_data"]  # type: ignore[index]
        assert personal["found"] or personal["error"] is None  # type: ignore[index]
