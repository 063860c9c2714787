"""``hybrid-router serve`` on SIGTERM: requests in flight finish, then the process exits 0 (a clean stop)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.support.processes import free_port, running


def test_sigterm_lets_a_stream_in_flight_finish_and_exits_zero(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"targets": {"edge": {"type": "fake", "reply": "all of it arrives", "delay_s": 1.5}}})
    )
    port = free_port()
    args = ["-m", "service.cli", "serve", "--config", str(config), "--port", str(port)]
    with running(args, port=port, ready_path="/readyz", log=tmp_path / "serve.log") as server:
        lines: list[str] = []

        def stream() -> None:
            body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as answer:
                lines.extend(line for line in answer.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(0.5)  # the request is in flight, its answer 1 s away
        server.process.send_signal(signal.SIGTERM)
        reader.join(30)
        code = server.process.wait(timeout=30)

    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "all of it arrives"
    assert code == 0, server.output()
    assert "Traceback" not in server.output()
