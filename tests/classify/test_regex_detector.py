import pytest

from router.chat import ChatRequest
from router.classify.classifier import RequestClassifier
from router.classify.personal_data import FixedDetector, RegexDetector, luhn_valid
from router.tokens import EstimateCounter


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to jane.doe@example.co.uk today", ["email"]),
        ("card 4111 1111 1111 1111 exp 09/29", ["payment_card"]),
        ("order 4111 1111 1111 1112 shipped", []),
        ("SSN 078-05-1120 on file", ["ssn"]),
        ("server at 192.168.10.24 is down", ["ip_address"]),
        ("version 1.2.3.4000 released", []),
        ("key sk-proj-abcdefghijklmnopqrstuvwx123", ["secret"]),
        ("call +1 415-555-0100 now", ["phone"]),
        ("The year 2024 had 365 days", []),
    ],
)
def test_regex_detector(text: str, kinds: list[str]) -> None:
    assert [span.kind for span in RegexDetector().detect(text)] == kinds


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_detector_failure_fails_closed() -> None:
    classifier = RequestClassifier(detector=FixedDetector(error=TimeoutError("slow")))
    features = classifier.classify_now(ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]}))
    assert features.personal_data.found is True
    assert features.personal_data.error == "TimeoutError"


def test_token_estimate_counts_cjk_characters_one_each() -> None:
    english = ChatRequest.model_validate({"messages": [{"role": "user", "content": "a" * 400}]})
    chinese = ChatRequest.model_validate({"messages": [{"role": "user", "content": "中" * 100}]})
    assert EstimateCounter().count(english) == 104
    assert EstimateCounter().count(chinese) == 104
