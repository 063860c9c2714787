"""``hybrid-router keys create|list|revoke`` against a SQLite store, and a gateway on the same store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.settings import load_settings
from tests.spend.conftest import serving


def config(tmp_path: Path, **extra: object) -> Path:
    file = tmp_path / "gateway.yaml"
    values = {
        "targets": {"edge": {"type": "fake", "reply": "edge says hi"}},
        "policies": [{"type": "default", "target": "edge"}],
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}", "key_cache_s": 0},
        **extra,
    }
    file.write_text(yaml.safe_dump(values))
    return file


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def arun(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI from an async test: it runs its own event loop, so in a thread."""
    return await asyncio.to_thread(run, capsys, *argv)


async def test_a_created_key_works_at_once_shows_only_its_hash_and_stops_working_once_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = config(tmp_path)
    code, out, _ = await arun(capsys, "keys", "create", "--tenant", "beta", "--label", "ci", "--rpm", "5",
                              "--config", str(file), "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    key = created["key"]
    assert created["tenant"] == "beta" and created["limits"] == {"requests_per_minute": 5}

    async with serving(load_settings(file)) as (client, _):
        without = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        with_key = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                                     headers={"authorization": f"Bearer {key}"})  # fmt: skip
        metrics = (await client.get("/metrics")).text

        code, out, _ = await arun(capsys, "keys", "list", "--config", str(file))
        assert code == 0 and "beta" in out and "active" in out and key not in out
        prefix = created["hash"].removeprefix("sha256:")[:12]
        code, out, _ = await arun(capsys, "keys", "revoke", prefix, "--config", str(file))
        assert code == 0 and out.startswith("revoked sha256:")
        revoked = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                                    headers={"authorization": f"Bearer {key}"})  # fmt: skip

    # The store holding keys turns authentication on, even with none in config.
    assert without.status_code == 401
    assert with_key.status_code == 200
    assert 'tenant="beta"' in metrics
    assert revoked.status_code == 401
    code, out, _ = await arun(capsys, "keys", "list", "--config", str(file), "--json")
    assert json.loads(out)[0]["revoked"] is True
    assert key not in (tmp_path / "state.db").read_bytes().decode("latin-1")


def test_keys_need_a_shared_store_and_known_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    memory = config(tmp_path, state={"url": "memory://"})
    code, _, err = run(capsys, "keys", "create", "--tenant", "x", "--config", str(memory))
    assert code == 2 and "memory://" in err

    file = config(tmp_path)
    code, _, err = run(capsys, "keys", "create", "--tenant", "x", "--allow", "cloud", "--config", str(file))
    assert code == 2 and "unknown target(s) cloud" in err


def test_revoking_an_unknown_key_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "revoke", "hr-not-a-key", "--config", str(config(tmp_path)))
    assert code == 1 and "no such active key" in err
