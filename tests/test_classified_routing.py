"""Classifier features driving policies end to end: redaction, semantic routes, difficulty, deadlines."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence

import numpy as np
import pytest

from router.backends.fake import ScriptedReply
from router.chat import ChatRequest
from router.classify.classifier import RequestClassifier
from router.classify.personal_data import FixedDetector, PatternDetector
from router.classify.semantic import SemanticRoutes
from router.features import Difficulty, Span
from router.policies.base import TargetCatalog
from router.policies.difficulty import DifficultyPolicy
from router.policies.privacy import PrivacyPolicy
from router.router import Router
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings
from tests.policies.helpers import context, views


class KeywordEmbedder:
    """A fake embedder: one axis per keyword, so similarities are predictable."""

    name, dims, cheap = "keywords", 3, True
    words = ("refund", "python", "weather")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.array([[float(w in t.lower()) for w in self.words] for t in texts], dtype=np.float32) + 1e-3
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_privacy_redact_sends_placeholders_to_the_cloud_and_restores_the_answer(client_for: ClientFactory) -> None:
    def echo(request: ChatRequest) -> ScriptedReply:
        return ScriptedReply(text=f"Got {request.messages[-1].text()}")

    cloud = cloud_backend(echo)
    settings = make_settings(
        policies=[{"type": "privacy", "on_personal_data": "redact"}, {"type": "default", "target": "cloud"}]
    )
    client = client_for(settings, backends={"edge": edge_backend(), "cloud": cloud})

    body = chat_body("my email is ann@example.com")
    plain = client.post("/v1/chat/completions", json=body)
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    route = client.post("/v1/route", json=body).json()

    sent = [r.messages[-1].text() for r in cloud.requests]
    assert len(sent) == 2 and all(re.fullmatch(r"my email is <EMAIL_1_[a-z0-9]{6}>", text) for text in sent)
    assert sent[0] != sent[1], "each request draws its own placeholder tag"
    assert plain.json()["choices"][0]["message"]["content"] == "Got my email is ann@example.com"
    events = [json.loads(line[6:]) for line in streamed.text.split("\n\n") if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == (
        "Got my email is ann@example.com"
    )
    assert plain.headers["x-route-reason"] == "default target cloud"
    assert route["redact"] is True
    assert route["trail"][0] == {
        "policy": "privacy",
        "reason": "personal data (email): redacted before leaving the device",
        "redact": True,
    }


def test_redact_is_not_applied_when_the_request_stays_local(client_for: ClientFactory) -> None:
    edge = edge_backend(lambda r: ScriptedReply(text=r.messages[-1].text()))
    settings = make_settings(
        policies=[{"type": "privacy", "on_personal_data": "redact"}, {"type": "default", "target": "edge"}]
    )
    client = client_for(settings, backends={"edge": edge, "cloud": cloud_backend()})
    client.post("/v1/chat/completions", json=chat_body("ann@example.com"))
    assert edge.requests[0].messages[-1].text() == "ann@example.com"


async def test_failing_detector_fails_closed_and_redact_cannot_help() -> None:
    classifier = RequestClassifier(detector=FixedDetector(error=RuntimeError("detector crashed")))
    policies = [PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="redact"))]
    router = Router(
        backends={"edge": edge_backend(), "cloud": cloud_backend()}, policies=policies, classifier=classifier
    )
    decision = await router.decide(ChatRequest.model_validate({"messages": [{"role": "user", "content": "harmless"}]}))
    assert decision.features is not None
    assert decision.features.personal_data.found is True
    assert decision.features.personal_data.error == "RuntimeError"
    assert decision.target == "edge"
    assert decision.trail[0].to_dict()["forbid"] == {
        "cloud": "detector failed, assuming personal data must stay on this machine"
    }


class SlowDetector:
    name = "slow"

    def load(self) -> None:
        pass

    def detect(self, text: str) -> Sequence[Span]:
        import time

        time.sleep(0.3)
        return []


async def test_classifier_past_its_deadline_assumes_personal_data_and_says_so() -> None:
    classifier = RequestClassifier(detector=SlowDetector(), deadline_ms=20, inline_chars=0)
    router = Router(
        backends={"edge": edge_backend(), "cloud": cloud_backend()}, policies=[PrivacyPolicy()], classifier=classifier
    )
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hello"}]})
    started = asyncio.get_running_loop().time()
    decision = await router.decide(request)
    assert asyncio.get_running_loop().time() - started < 0.2
    assert decision.features is not None
    assert decision.features.personal_data.error == "deadline"
    assert decision.features.difficulty == Difficulty(decision.features.difficulty.score, "rules")  # type: ignore[union-attr]
    assert decision.trail[0].policy == "classifier"
    assert "passed its 20 ms deadline" in decision.trail[0].reason
    assert decision.target == "edge"
    classifier.close()


async def test_semantic_routes_match_and_report_no_match() -> None:
    routes = SemanticRoutes(KeywordEmbedder(), [("billing", ["I want a refund"], 0.8), ("code", ["python error"], 0.8)])
    classifier = RequestClassifier(embedder=KeywordEmbedder(), routes=routes, detector=PatternDetector())

    billing = await classifier.classify(
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "Refund please"}]})
    )
    nothing = await classifier.classify(
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "hello there"}]})
    )
    classifier.close()

    assert billing.semantic is not None
    assert billing.semantic.route == "billing"
    assert nothing.semantic is not None
    assert nothing.semantic.route is None
    assert nothing.semantic.best in ("billing", "code")


def test_semantic_policy_from_config_maps_routes_to_targets(client_for: ClientFactory) -> None:
    from router.policies.registry import build_policies

    catalog = TargetCatalog(views(), routes=("billing", "code"))
    (policy,) = build_policies(
        [{"type": "semantic", "routes": {"billing": "edge", "code": {"target": "cloud", "mode": "require"}}}], catalog
    )
    from router.features import Features, RouteMatch

    base = context().features
    for match, expected in (
        (RouteMatch("code", 0.9, "code"), ("require", "cloud")),
        (RouteMatch("billing", 0.9, "billing"), ("prefer", "edge")),
    ):
        features = Features(**{slot: getattr(base, slot) for slot in base.__slots__} | {"semantic": match})
        verdict = policy.evaluate(context().__class__(context().request, features, views(), None, context().so_far))
        assert getattr(verdict, expected[0]) == expected[1]


def test_semantic_policy_rejects_unknown_routes() -> None:
    from router.errors import ConfigError
    from router.policies.registry import build_policies

    with pytest.raises(ConfigError, match="unknown semantic route 'sales'; classifier.routes: billing"):
        build_policies([{"type": "semantic", "routes": {"sales": "edge"}}], TargetCatalog(views(), routes=("billing",)))


@pytest.mark.parametrize(("score", "target"), [(0.49, "edge"), (0.5, "cloud"), (0.51, "cloud")])
def test_difficulty_policy_at_its_threshold(score: float, target: str) -> None:
    from router.features import Features

    policy = DifficultyPolicy(DifficultyPolicy.Options(threshold=0.5), TargetCatalog(views()))
    base = context().features
    features = Features(
        **{slot: getattr(base, slot) for slot in base.__slots__} | {"difficulty": Difficulty(score, "head:test")}
    )
    ctx = context()
    verdict = policy.evaluate(ctx.__class__(ctx.request, features, views(), None, ctx.so_far))
    assert verdict.prefer == target
    assert f"head:test {score:.2f}" in verdict.reason
