"""``server.host: auto``, the container image's default: every interface only behind client keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.state import SQLiteState
from service.auth import KeyChecker, hash_key, startup_problems
from service.server import listen_host
from service.settings import Settings

TARGETS = {"edge": {"type": "fake"}}


def settings(**values: object) -> Settings:
    return Settings.model_validate({"targets": TARGETS, "server": {"host": "auto"}, **values})


def test_without_keys_auto_is_loopback_and_says_how_to_open_it(caplog: pytest.LogCaptureFixture) -> None:
    assert listen_host(settings(), environ={}) == "127.0.0.1"
    assert "HYBRID_ROUTER_API_KEYS" in caplog.text


def test_keys_from_the_environment_or_config_open_every_interface() -> None:
    assert listen_host(settings(), environ={"HYBRID_ROUTER_API_KEYS": "sk-1"}) == "0.0.0.0"
    keyed = settings(auth={"api_key_hashes": [hash_key("sk-2")]})
    assert listen_host(keyed, environ={}) == "0.0.0.0"


def test_allow_unauthenticated_is_the_operators_word_that_something_in_front_guards_it() -> None:
    assert listen_host(settings(auth={"allow_unauthenticated": True}), environ={}) == "0.0.0.0"


def test_keys_in_the_state_store_count(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"

    async def create() -> None:
        store = SQLiteState(tmp_path / "state.db")
        try:
            await store.keys.create(hash_key("sk-stored"), tenant="acme")
        finally:
            await store.close()

    assert listen_host(settings(state={"url": url}), environ={}) == "127.0.0.1"
    asyncio.run(create())
    assert listen_host(settings(state={"url": url}), environ={}) == "0.0.0.0"


def test_an_explicit_host_is_kept_and_auto_passes_the_open_relay_check() -> None:
    explicit = Settings.model_validate({"targets": TARGETS, "server": {"host": "0.0.0.0"}})
    assert listen_host(explicit, environ={}) == "0.0.0.0"
    assert startup_problems(explicit.server, explicit.auth, KeyChecker([])) != []
    auto = settings()
    assert startup_problems(auto.server, auto.auth, KeyChecker([])) == []
