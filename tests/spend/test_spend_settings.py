"""Spend settings fail at start-up with the key's path, never later at a request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.auth import hash_key
from service.settings import Settings, keep_restart_only

TARGETS = {"edge": {"type": "fake"}, "cloud": {"type": "fake", "local": False}}


def settings(**values: object) -> Settings:
    return Settings(targets=TARGETS, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": {"keys": [{"hash": "sk-plain", "tenant": "a"}]}}, "sha256:"),
        ({"auth": {"keys": [{"hash": hash_key("k"), "tenant": "a"}, {"hash": hash_key("k"), "tenant": "b"}]}},
         "listed twice"),
        ({"auth": {"keys": [{"hash": hash_key("k"), "allowed_targets": ["gpu"]}]}}, "unknown target(s) gpu"),
        ({"auth": {"keys": [{"hash": hash_key("k"), "tenant": "a b"}]}}, "pattern"),
        ({"tenants": {"acme": {"limits": {"usd_per_day": -1}}}}, "greater than or equal to 0"),
        ({"tenants": {"acme": {"on_budget_exhausted": "cloud"}}}, "'reject' or 'edge'"),
        ({"state": {"url": "postgres://db"}}, "use memory://"),
        ({"state": {"url": "sqlite://relative.db"}}, "sqlite:///<relative path>"),
        ({"spend": {"saved_against": "gpu"}}, "unknown target 'gpu'"),
    ],
)  # fmt: skip
def test_bad_spend_settings_are_refused_naming_the_problem(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**values)


def test_the_store_url_needs_a_restart_and_the_outage_rule_does_not() -> None:
    running = settings(state={"url": "sqlite:///a.db"})
    loaded = settings(state={"url": "redis://127.0.0.1:6379/0", "on_outage": "reject"})

    kept, differed = keep_restart_only(running, loaded)

    assert kept.state.url == "sqlite:///a.db" and kept.state.on_outage == "reject"
    assert differed == ["state.url"]
