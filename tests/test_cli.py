"""The hybrid-router command, run in-process."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from service.auth import hash_key
from service.cli import main

CONFIG = """
targets:
  edge: {type: fake}
  cloud: {type: fake, local: false}
policies:
  - {type: explicit}
  - {type: privacy}
  - {type: default, target: cloud}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_config_check_ok(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{config}: OK (config_version " in out
    assert "targets:  edge (fake), cloud (fake)" in out
    assert "policies: explicit -> privacy -> default" in out


def test_config_check_reports_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: {e: {type: fake}}\npolicies: [{type: default, target: nowhere}]\n")
    assert main(["config", "check", str(bad)]) == 2
    assert (
        "config error: policies[0].target: unknown target 'nowhere'; configured targets: e" in capsys.readouterr().err
    )


def test_route_prints_the_trail(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"messages": [{"role": "user", "content": "call me on +44 20 7946 0958"}]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))
    assert main(["route", "--config", str(config)]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["target"] == "edge"
    assert [step["policy"] for step in decision["trail"]] == ["explicit", "privacy", "default"]
    assert decision["features"]["personal_data"]["kinds"] == ["phone"]


def test_route_rejects_bad_json(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"{nope")))
    assert main(["route", "--config", str(config)]) == 1
    assert "error: The body is not valid JSON" in capsys.readouterr().err


def test_auth_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["auth", "hash", "my-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("my-key")
