"""Language identification, and that it is loaded only when something reads it."""

from __future__ import annotations

import pytest

from router.chat import ChatRequest
from router.classify.build import build_classifier, plan_classifier
from router.classify.language import LanguageDetector
from router.config import ClassifierConfig


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    detector = LanguageDetector()
    detector.load()
    return detector


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Could you summarise the attached quarterly report for the board?", "en"),
        ("Kannst du mir bitte den Bericht für den Vorstand zusammenfassen?", "de"),
        ("Peux-tu résumer le rapport trimestriel pour le conseil d'administration ?", "fr"),
        ("四半期報告書を取締役会向けに要約してください。", "ja"),
    ],
)
def test_identifies_common_languages(detector: LanguageDetector, text: str, code: str) -> None:
    language, probability = detector.detect(text)
    assert language == code
    assert probability >= 0.5


def test_too_short_to_tell_is_reported_as_unknown(detector: LanguageDetector) -> None:
    assert detector.detect("ok") == (None, 0.0)


def request(text: str) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": text}]})


def test_language_runs_only_when_a_policy_needs_it_or_config_asks() -> None:
    text = "Kannst du mir bitte den Bericht für den Vorstand zusammenfassen?"

    idle = build_classifier(plan_classifier(ClassifierConfig(), frozenset()))
    needed = build_classifier(plan_classifier(ClassifierConfig(), frozenset({"language"})))
    forced = build_classifier(plan_classifier(ClassifierConfig(detect_language=True), frozenset()))
    off = build_classifier(plan_classifier(ClassifierConfig(detect_language=False), frozenset({"language"})))

    assert idle.language is None and idle.classify_now(request(text)).language is None
    assert needed.classify_now(request(text)).language == "de"
    assert forced.classify_now(request(text)).language == "de"
    assert off.classify_now(request(text)).language is None
