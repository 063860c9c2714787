"""The gateway builds its router once, complete: policies, classifier and token counting wired in."""

from __future__ import annotations

from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry

from router.backends.base import Capabilities
from router.backends.fake import ScriptedBackend
from router.chat import ChatRequest
from router.classify.base import Classifier, FixedClassifier
from router.classify.build import ConfiguredClassifier
from router.errors import ConfigError
from router.features import Features
from router.policies.base import RoutingContext, TargetCatalog, Verdict
from router.router import Router
from service.gateway import Gateway
from tests.conftest import cloud_backend, edge_backend, make_settings


class CountsWords:
    name = "words"

    def count(self, request: ChatRequest) -> int:
        return len(request.prompt_text.split())


def hello() -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "one two three"}]})


async def test_the_router_is_complete_at_construction_and_counts_with_the_local_models_tokenizer() -> None:
    edge = edge_backend()
    gateway = Gateway.from_settings(
        make_settings(), backends={"edge": edge, "cloud": cloud_backend()}, registry=CollectorRegistry()
    )
    router = gateway.router
    assert [policy.name for policy in router.policies] == [
        "explicit",
        "privacy",
        "context_window",
        "capability",
        "default",
    ]
    assert isinstance(router.classifier, ConfiguredClassifier)
    assert isinstance(router.classifier, Classifier)

    await gateway.start()
    try:
        before = (await router.decide(hello())).features
        edge.token_counter = CountsWords()  # the edge model's tokenizer, once it has loaded
        after = (await router.decide(hello())).features
    finally:
        await gateway.aclose()
    assert before is not None and before.token_counter.startswith("estimate")
    assert after is not None and (after.token_counter, after.prompt_tokens) == ("words", 3)


def test_cloud_tokenizers_are_never_used_for_counting() -> None:
    cloud = ScriptedBackend("cloud", token_counter=CountsWords(), capabilities=Capabilities())
    gateway = Gateway.from_settings(
        make_settings(), backends={"edge": edge_backend(), "cloud": cloud}, registry=CollectorRegistry()
    )
    classifier = gateway.router.classifier
    assert isinstance(classifier, ConfiguredClassifier)
    assert classifier.token_counter is not None and classifier.token_counter.name.startswith("estimate")


class NeedsAHoroscope:
    name = "horoscope"
    requires: ClassVar[frozenset[str]] = frozenset({"embedding", "horoscope"})

    def __init__(self, options: object, targets: TargetCatalog) -> None:
        pass

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        return Verdict(reason="stars")


def test_a_policy_requiring_an_unknown_feature_fails_at_build_naming_the_valid_ones() -> None:
    settings = make_settings(policies=[{"type": f"{__name__}:NeedsAHoroscope"}])
    with pytest.raises(ConfigError) as raised:
        Gateway.from_settings(settings, backends={"edge": edge_backend()}, registry=CollectorRegistry())
    assert raised.value.message == (
        "policies[0] (tests.test_gateway_build:NeedsAHoroscope): requires unknown feature(s) 'horoscope'; "
        "the classifier provides: difficulty, embedding, language"
    )


async def test_the_fixed_classifier_fake_drives_the_router() -> None:
    features = Features(prompt_tokens=9_999, token_counter="fixed", prompt_chars=3, message_count=1, max_tokens=None,
                        wants_tools=False, wants_json=False, has_images=False, stream=False)  # fmt: skip
    fake = FixedClassifier(features)
    router = Router(backends={"edge": edge_backend()}, policies=[], classifier=fake)
    decision = await router.decide(hello())
    assert decision.features is features
    assert fake.seen == [hello()]
