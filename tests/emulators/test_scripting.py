"""Scripted emulator behaviours are typed: a key no behaviour has fails loudly, in process and over HTTP."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.emulators import anthropic_server, azure_openai_server, bedrock_server, google_server, openai_server
from tests.emulators.bedrock_server import BedrockBehaviour, StreamException
from tests.emulators.google_server import TokenBehaviour
from tests.emulators.scripting import Behaviour, cut_at_stop

APPS = {
    "openai": lambda: openai_server.create_app(),
    "azure_openai": lambda: azure_openai_server.create_app(),
    "anthropic": lambda: anthropic_server.create_app(),
    "google": lambda: google_server.create_app(),
    "bedrock": lambda: bedrock_server.create_app(),
}


def test_an_unknown_key_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Behaviour has no cut_afer; it knows .*cut_after"):
        Behaviour.parse({"cut_afer": 2})


def test_nested_behaviours_are_typed_too() -> None:
    behaviour = BedrockBehaviour.parse({"exception": {"type": "throttlingException", "after": 1}})
    assert behaviour.exception == StreamException(type="throttlingException", after=1)
    with pytest.raises(ValueError, match="StreamException has no kind"):
        BedrockBehaviour.parse({"exception": {"kind": "throttlingException"}})


@pytest.mark.parametrize("name", sorted(APPS))
def test_the_script_endpoint_refuses_a_typo_and_queues_nothing(name: str) -> None:
    app = APPS[name]()
    with TestClient(app) as client:
        refused = client.post("/_emulator/script", json=[{"content": "ok"}, {"contnet": "typo"}])
        assert refused.status_code == 400
        assert "has no contnet" in refused.json()["error"]
        assert len(app.state.emulator.script) == 0
        assert client.post("/_emulator/script", json={"content": "ok"}).json() == {"queued": 1}


def test_google_token_behaviours_go_to_the_token_endpoint() -> None:
    state = google_server.EmulatorState()
    state.queue([{"endpoint": "token", "expires_in": 10}, {"content": "hi"}, TokenBehaviour(status=400)])
    assert (len(state.token_script), len(state.script)) == (2, 1)


def test_a_stop_sequence_cuts_the_pieces_at_its_earliest_occurrence() -> None:
    assert cut_at_stop(["one ", "two ", "three"], ["three", "wo"]) == (["one ", "t"], "wo")
    assert cut_at_stop(["a ", "b"], ["zz"]) == (["a ", "b"], None)
