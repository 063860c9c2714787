"""The router's side of the loop: distilled routes go to the student, gated, shadow-checked, and back on drift."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_models.distill.prefix import system_hash
from router.backends.base import Capabilities
from router.backends.fake import ScriptedBackend, ScriptedReply
from router.backends.versions import ModelVersion, StudentCard
from router.chat import ChatRequest
from router.errors import BackendError
from router.policies.base import TargetCatalog, TargetView
from router.policies.default import DefaultPolicy
from router.policies.distilled import DISTILLED_ROUTE, DistilledPolicy, answers_agree
from router.router import MAX_SHADOWS_IN_FLIGHT, Router
from router.tasks import TASK_TAG

SYSTEM = "You label customer messages with one intent. " * 10


def card(**overrides: Any) -> StudentCard:
    values: dict[str, Any] = {
        "version": "v2",
        "tasks": frozenset({"intents"}),
        "prompt_hashes": frozenset({system_hash(SYSTEM)}),
        "gate_threshold": -0.5,
        "gate_signal": "mean",
        "gate_coverage": 0.8,
    }
    return StudentCard(**{**values, **overrides})


class Always:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def build(
    student: StudentCard | None,
    *,
    edge: ScriptedReply | None = None,
    cloud: ScriptedReply | None = None,
    sample: float = 0.0,
    **options: Any,
) -> tuple[Router, DistilledPolicy, ScriptedBackend, ScriptedBackend]:
    edge_backend = ScriptedBackend(
        "edge",
        edge or ScriptedReply(text="card_arrival", token_logprobs=[-0.1, -0.2]),
        capabilities=Capabilities(local=True),
        version=ModelVersion(student.version if student else "base", "base", student),
    )
    cloud_backend = ScriptedBackend("cloud", cloud or ScriptedReply(text="card_arrival"))
    backends = {"edge": edge_backend, "cloud": cloud_backend}
    catalog = TargetCatalog(
        {name: TargetView(name, "m", b.capabilities, b.readiness()) for name, b in backends.items()}
    )
    policy = DistilledPolicy(DistilledPolicy.Options(**options), catalog, sample=Always(sample))
    default = DefaultPolicy(DefaultPolicy.Options(target="cloud"), catalog)
    return Router(backends=backends, policies=[policy, default]), policy, edge_backend, cloud_backend


def request(task: str | None = "intents", system: str | None = None, text: str = "Where is my card?") -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    chat = ChatRequest.model_validate({"messages": [*messages, {"role": "user", "content": text}]})
    if task:
        chat.memo[TASK_TAG] = task
    return chat


async def test_a_learned_task_goes_to_the_student_behind_its_calibrated_gate() -> None:
    router, _, _, _ = build(card())

    decision = await router.decide(request())

    assert decision.target == "edge"
    assert decision.decided_by == "distilled"
    assert decision.cascade is not None
    assert (decision.cascade.first, decision.cascade.then, decision.cascade.threshold) == ("edge", "cloud", -0.5)
    assert decision.model_version == "v2"
    assert "distilled route intents (v2)" in decision.reason


async def test_the_fixed_system_prompt_names_the_route_when_no_task_is_tagged() -> None:
    router, _, _, _ = build(card(tasks=frozenset()))

    decision = await router.decide(request(task=None, system=SYSTEM))

    assert decision.target == "edge"
    assert f"prompt:{system_hash(SYSTEM)[:8]}" in decision.reason


@pytest.mark.parametrize(
    ("student", "chat", "why"),
    [
        (None, request(), "serves no distilled model"),
        (card(), request(task="other"), "not a route v2 learned"),
        (card(gate_coverage=0.05), request(), "not competent yet (its gate keeps 5% of the holdout)"),
        (card(gate_threshold=None), request(), "not competent yet (no calibrated gate)"),
    ],
)
async def test_other_traffic_and_an_incompetent_student_stay_on_the_cloud(
    student: StudentCard | None, chat: ChatRequest, why: str
) -> None:
    router, _, _, _ = build(student)

    decision = await router.decide(chat)

    assert decision.target == "cloud"
    assert why in decision.trail[0].reason
    assert DISTILLED_ROUTE not in chat.memo


async def test_an_unsure_student_answer_escalates_to_the_cloud() -> None:
    unsure = ScriptedReply(text="card_linking", token_logprobs=[-2.0, -1.5])
    router, _, _, cloud = build(card(), edge=unsure, cloud=ScriptedReply(text="card_arrival"))
    chat = request()
    decision = await router.decide(chat)

    result = await router.backend_for(decision).complete(chat)

    assert result.body["choices"][0]["message"]["content"] == "card_arrival"
    assert len(cloud.requests) == 1


async def test_shadow_checks_count_agreement_off_the_client_path() -> None:
    router, policy, _, cloud = build(card(), cloud=ScriptedReply(text="Card_arrival.", delay_s=0.05), sample=0.0)
    chat = request()
    await router.decide(chat)

    seen: list[str] = []
    router.observe_answer(chat, "edge", "card_arrival", escalated=False, report=lambda t, o, r: seen.append(o))
    assert seen == []  # not awaited: the client's answer does not wait for the shadow
    await router.drain_shadows()

    assert seen == ["agree"]
    assert cloud.requests[0].stream is False
    assert policy.health()[("intents", "v2")]["agreement"] == 1.0


async def test_sustained_disagreement_sends_the_route_back_to_the_cloud_and_says_why() -> None:
    router, policy, _, _ = build(card(), cloud=ScriptedReply(text="lost_or_stolen_card"), min_samples=5, window=10)
    for _ in range(5):
        chat = request()
        assert (await router.decide(chat)).target == "edge"
        router.observe_answer(chat, "edge", "card_arrival", escalated=False)
        await router.drain_shadows()

    decision = await router.decide(request())

    assert decision.target == "cloud"
    assert "drift: live agreement 0.00 < 0.85 over the last 5 shadowed answers of v2" in decision.reason
    assert policy.health()[("intents", "v2")]["drifted"]


async def test_a_new_version_starts_a_new_agreement_window() -> None:
    router, _, edge, _ = build(card(), cloud=ScriptedReply(text="x"), min_samples=1)
    chat = request()
    await router.decide(chat)
    router.observe_answer(chat, "edge", "card_arrival", escalated=False)
    await router.drain_shadows()
    assert (await router.decide(request())).target == "cloud"

    edge.version = ModelVersion("v3", "base", card(version="v3"))

    assert (await router.decide(request())).target == "edge"


async def test_no_shadow_for_personal_data_escalated_answers_or_unsampled_requests() -> None:
    router, _, _, cloud = build(card(), sample=0.0)
    private = request(text="My SSN is 078-05-1120, where is my card?")
    await router.decide(private)
    escalated = request()
    await router.decide(escalated)

    router.observe_answer(private, "edge", "card_arrival", escalated=False)
    router.observe_answer(escalated, "edge", "card_arrival", escalated=True)
    await router.drain_shadows()
    assert cloud.requests == []

    unsampled, _, _, cloud2 = build(card(), sample=0.5, shadow_rate=0.05)
    chat = request()
    await unsampled.decide(chat)
    unsampled.observe_answer(chat, "edge", "card_arrival", escalated=False)
    await unsampled.drain_shadows()
    assert cloud2.requests == []


async def test_a_failed_shadow_is_not_counted_against_the_student() -> None:
    router, policy, _, _ = build(card(), cloud=ScriptedReply(error=BackendError("upstream 500")), min_samples=1)
    chat = request()
    await router.decide(chat)
    seen: list[str] = []

    router.observe_answer(chat, "edge", "card_arrival", escalated=False, report=lambda t, o, r: seen.append(o))
    await router.drain_shadows()

    assert seen == ["error"]
    assert policy.health() == {}


async def test_shadows_in_flight_are_bounded() -> None:
    router, _, _, cloud = build(card(), cloud=ScriptedReply(text="card_arrival", delay_s=0.2))
    seen: list[str] = []
    for _ in range(MAX_SHADOWS_IN_FLIGHT + 3):
        chat = request()
        await router.decide(chat)
        router.observe_answer(chat, "edge", "card_arrival", escalated=False, report=lambda t, o, r: seen.append(o))

    assert seen == ["skipped"] * 3
    await asyncio.wait_for(router.drain_shadows(), 5)
    assert len(cloud.requests) == MAX_SHADOWS_IN_FLIGHT


def test_answers_agree_ignores_case_spacing_and_a_final_full_stop() -> None:
    assert answers_agree("card_arrival", "  CARD_ARRIVAL.\n")
    assert not answers_agree("card_arrival", "card_arrival please")
