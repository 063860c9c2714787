"""``sticky``: a conversation that escalated to the cloud stays there for a while."""

from __future__ import annotations

from typing import Any

from router.chat import ChatRequest
from router.policies.base import Tally, TargetCatalog
from router.policies.sticky import StickyPolicy
from router.sessions import SESSION_ID, MemorySessions, conversation_key
from tests.conftest import ClientFactory, chat_body, make_settings
from tests.policies.helpers import context, views


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turn(*contents: str, session: str | None = None) -> ChatRequest:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for index, content in enumerate(contents):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": content})
    request = ChatRequest.model_validate({"messages": messages})
    if session:
        request.memo[SESSION_ID] = session
    return request


def sticky(clock: Clock, ttl_s: float = 60) -> StickyPolicy:
    store = MemorySessions(ttl_s=ttl_s, clock=clock)
    return StickyPolicy(StickyPolicy.Options(ttl_s=ttl_s), TargetCatalog(views()), store=store)


def test_later_turns_of_an_escalated_conversation_score_for_its_cloud_target() -> None:
    clock = Clock()
    policy = sticky(clock)
    first = turn("Prove the four colour theorem.")
    assert policy.evaluate(context(first)).abstains
    policy.observe(first, "cloud", ok=True)

    later = turn("Prove the four colour theorem.", "(a long proof)", "And in simpler words?")
    verdict = policy.evaluate(context(later))
    assert verdict.scores == {"cloud": 100.0}
    assert verdict.reason.startswith("sticky: conversation opening ") and verdict.reason.endswith(
        "escalated to cloud (ttl 60 s)"
    )


def test_only_successful_cloud_answers_make_a_conversation_stick() -> None:
    policy = sticky(Clock())
    request = turn("hello")
    policy.observe(request, "edge", ok=True)
    policy.observe(request, "cloud", ok=False)
    assert policy.evaluate(context(request)).abstains


def test_stickiness_expires_after_the_ttl_since_the_last_cloud_turn() -> None:
    clock = Clock()
    policy = sticky(clock, ttl_s=60)
    policy.observe(turn("q"), "cloud", ok=True)
    clock.now += 59
    assert policy.evaluate(context(turn("q", "a", "q2"))).scores
    clock.now += 2
    assert policy.evaluate(context(turn("q", "a", "q2"))).abstains


def test_a_session_id_names_the_conversation_whatever_its_messages() -> None:
    policy = sticky(Clock())
    policy.observe(turn("first topic", session="s-42"), "cloud", ok=True)
    assert policy.evaluate(context(turn("another topic", session="s-42"))).scores == {"cloud": 100.0}
    assert policy.evaluate(context(turn("another topic", session="s-43"))).abstains
    assert conversation_key(turn("x", session="s-42")) == "id:s-42"


def test_a_target_forbidden_so_far_is_never_chosen_and_the_reason_says_why() -> None:
    policy = sticky(Clock())
    policy.observe(turn("q"), "cloud", ok=True)
    tally = Tally(forbidden={"cloud": "personal data (email) must stay on this machine"})
    verdict = policy.evaluate(context(turn("q", "a", "my mail is jo@example.com"), tally=tally))
    assert not verdict.scores
    assert "forbidden: personal data (email) must stay on this machine" in verdict.reason


def test_through_the_gateway_a_conversation_stays_on_the_cloud_once_it_went_there(client_for: ClientFactory) -> None:
    policies = [{"type": "explicit"}, {"type": "privacy"}, {"type": "sticky"}, {"type": "default", "target": "edge"}]
    client = client_for(make_settings(policies=policies))
    opening = [{"role": "user", "content": "Explain monads."}]
    assert client.post("/v1/chat/completions", json=chat_body("Explain monads.")).headers["x-route-target"] == "edge"
    pinned = client.post("/v1/chat/completions", json={"model": "cloud", "messages": opening})
    assert pinned.headers["x-route-target"] == "cloud"

    follow_up = {
        "messages": [*opening, {"role": "assistant", "content": "..."}, {"role": "user", "content": "Shorter?"}]
    }
    response = client.post("/v1/chat/completions", json=follow_up)
    assert response.headers["x-route-target"] == "cloud"
    assert response.headers["x-route-reason"].startswith("sticky: conversation opening ")

    by_id = client.post("/v1/chat/completions", json=chat_body("new topic"), headers={"x-session-id": "chat-7"})
    assert by_id.headers["x-route-target"] == "edge"
    client.post("/v1/chat/completions", json={"model": "cloud", **chat_body("x")}, headers={"x-session-id": "chat-7"})
    again = client.post("/v1/chat/completions", json=chat_body("new topic"), headers={"x-session-id": "chat-7"})
    assert again.headers["x-route-target"] == "cloud"
