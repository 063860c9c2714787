"""Every recipe in README's "Recipes" is a file in deploy/recipes/ that `hybrid-router config check` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "deploy" / "recipes").glob("*.yaml"))


def test_there_are_the_five_recipes() -> None:
    assert [f.stem for f in RECIPES] == [
        "cost-cap-per-tenant", "edge-first-escalation", "latency-slo", "privacy-first", "replicas-redis"
    ]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda f: f.stem)
def test_each_recipe_passes_config_check_and_is_in_the_readme_as_it_is(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(recipe)]) == 0, capsys.readouterr().err
    assert "OK (config_version" in capsys.readouterr().out
    assert f"```yaml\n{recipe.read_text()}```" in (ROOT / "README.md").read_text()
