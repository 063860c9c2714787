"""`hybrid-router distill promote | rollback`: moving the registry's pointer, and refusing a failed version."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_models.distill.promote import add_promote_commands, promote_cli, rollback_cli
from edge_models.distill.registry import Registry
from tests.edge.swapping import fake_model_folder, write_version


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    write_version(root, "v1")
    write_version(root, "v2")
    write_version(
        root, "v3",
        metrics={"promotable": False, "decision": "not promotable: gain 0.01 < 0.02"},
    )  # fmt: skip
    return root


def test_promote_then_rollback_print_what_changed(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert promote_cli("v1", registry) == 0
    assert promote_cli("v2", registry) == 0
    assert Registry(registry).current() == "v2"
    assert rollback_cli(registry) == 0
    assert rollback_cli(registry) == 0

    out = capsys.readouterr().out
    assert f"promoted v1 (was base) in {registry}" in out
    assert "promoted v2 (was v1)" in out
    assert "rolled back v2 -> v1" in out and "rolled back v1 -> base" in out
    assert Registry(registry).current() is None
    assert rollback_cli(registry) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_promoting_the_serving_version_changes_nothing(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    promote_cli("v1", registry)
    history = len(Registry(registry).state()["history"])
    assert promote_cli("v1", registry) == 0
    assert "v1 already serves" in capsys.readouterr().out
    assert len(Registry(registry).state()["history"]) == history


def test_a_version_that_failed_evaluation_needs_force(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert promote_cli("v3", registry) == 1
    err = capsys.readouterr().err
    assert "v3 failed its evaluation: not promotable: gain 0.01 < 0.02; --force promotes it anyway" in err
    assert Registry(registry).current() is None

    assert promote_cli("v3", registry, force=True) == 0
    state = Registry(registry).state()
    assert state["current"] == "v3"
    assert state["history"][-1]["forced"].startswith("failed its evaluation")


def test_unknown_and_non_distilled_versions_are_refused(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_model_folder(registry / "v4")  # model files, no distill.json

    assert promote_cli("v9", registry) == 1
    err = capsys.readouterr().err
    assert "no distilled version 'v9'" in err and "(built: v1, v2, v3, v4)" in err
    assert promote_cli("v4", registry) == 1
    assert "v4 is not a distilled model (no distill.json)" in capsys.readouterr().err
    assert Registry(registry).current() is None


def test_the_default_registry_is_the_models_one(tmp_path: Path) -> None:
    write_version(tmp_path / "distilled" / "smollm2-135m-instruct", "v1")
    assert promote_cli("v1", None, models_dir=tmp_path) == 0
    assert Registry(tmp_path / "distilled" / "smollm2-135m-instruct").current() == "v1"


def test_the_subcommands_parse(registry: Path) -> None:
    parser = argparse.ArgumentParser()
    add_promote_commands(parser.add_subparsers(dest="sub"))

    args = parser.parse_args(["promote", "v3", "--registry", str(registry), "--force"])
    assert args.handler(args) == 0
    args = parser.parse_args(["rollback", "--registry", str(registry)])
    assert args.handler(args) == 0
    assert Registry(registry).current() is None
