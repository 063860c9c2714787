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


def _captured(folder: Path) -> None:
    from datetime import UTC, datetime

    from edge_models.distill.store import DatasetStore

    for day, task in ((1, "triage"), (1, "summary"), (2, "triage")):
        store = DatasetStore(folder, retention_days=None, clock=lambda day=day: datetime(2025, 3, day, tzinfo=UTC))
        answer = {"role": "assistant", "content": "ok"}
        store.append({"messages": [{"role": "user", "content": f"{task} {day}"}, answer], "metadata": {"task": task}})


def test_distill_data_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _captured(tmp_path / "data")

    assert main(["distill", "data", "stats", "--dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'data'}: 3 rows (" in out
    assert "in 2 files" in out and "2025-03-01 .. 2025-03-02" in out
    assert "tasks:   triage 2, summary 1" in out

    assert main(["distill", "data", "stats", "--dir", str(tmp_path / "data"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["rows"], stats["files"], stats["by_task"]) == (3, 2, {"triage": 2, "summary": 1})
    assert stats["train_rows"] + stats["holdout_rows"] == 3


def test_distill_data_dir_defaults_to_the_configs_capture_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _captured(tmp_path / "captured")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + f"distill:\n  capture:\n    dir: {tmp_path / 'captured'}\n")

    assert main(["distill", "data", "stats", "--config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["dir"], stats["rows"]) == (str(tmp_path / "captured"), 3)


def test_distill_data_purge_by_task_and_by_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data"
    _captured(folder)

    assert main(["distill", "data", "purge", "--dir", str(folder), "--task", "triage", "--yes"]) == 0
    assert "removed 2 rows (1 files deleted, 1 rewritten)" in capsys.readouterr().out
    assert main(["distill", "data", "purge", "--dir", str(folder), "--before", "2025-03-02", "--yes"]) == 0
    assert "removed 1 rows" in capsys.readouterr().out
    assert list(folder.glob("*.jsonl")) == []


def test_distill_data_purge_asks_for_yes_and_a_criterion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data"
    _captured(folder)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))

    assert main(["distill", "data", "purge", "--dir", str(folder), "--all"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert main(["distill", "data", "purge", "--dir", str(folder), "--yes"]) == 2
    assert "say what to purge" in capsys.readouterr().err
    assert len(list(folder.glob("*.jsonl"))) == 2

    assert main(["distill", "data", "purge", "--dir", str(folder), "--all", "--yes"]) == 0
    assert list(folder.glob("*.jsonl")) == []
    with pytest.raises(SystemExit):
        main(["distill", "data", "purge", "--dir", str(folder), "--before", "March"])
