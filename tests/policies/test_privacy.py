import json

import pytest

from router.chat import ChatRequest
from router.features import Span
from router.policies.base import RoutingContext
from router.policies.privacy import PrivacyPolicy
from tests.policies.helpers import context

EMAIL = [Span("email", 0, 10)]


def test_no_personal_data_abstains() -> None:
    assert PrivacyPolicy().evaluate(context(personal=[])).abstains


def test_edge_action_forbids_every_non_local_target() -> None:
    verdict = PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="edge")).evaluate(context(personal=EMAIL))
    assert set(verdict.forbid) == {"cloud"}
    assert verdict.reason == "personal data (email): kept on device"


def test_reject_action_forbids_everything() -> None:
    verdict = PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="reject")).evaluate(context(personal=EMAIL))
    assert set(verdict.forbid) == {"edge", "cloud"}


def test_failed_detector_counts_as_personal_data() -> None:
    verdict = PrivacyPolicy().evaluate(context(detector_error="TimeoutError"))
    assert set(verdict.forbid) == {"cloud"}
    assert "detector failed" in verdict.reason


IMAGE = {"messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}  # fmt: skip


def image_context(text: str = "what is in this picture?") -> RoutingContext:
    body = json.loads(json.dumps(IMAGE))
    body["messages"][0]["content"][0]["text"] = text
    return context(ChatRequest.model_validate(body))


def test_uninspectable_parts_are_allowed_by_default_and_named_in_the_reason() -> None:
    verdict = PrivacyPolicy().evaluate(image_context())
    assert not verdict.forbid
    assert verdict.reason == "1 uninspectable part(s) (image) sent unread (on_uninspectable: allow)"


@pytest.mark.parametrize(("setting", "forbidden"), [("edge", {"cloud"}), ("reject", {"edge", "cloud"})])
def test_uninspectable_parts_can_be_kept_local_or_rejected(setting: str, forbidden: set[str]) -> None:
    policy = PrivacyPolicy(PrivacyPolicy.Options(on_uninspectable=setting))  # type: ignore[arg-type]
    verdict = policy.evaluate(image_context())
    assert set(verdict.forbid) == forbidden


def test_redaction_cannot_reach_into_an_image_so_a_stricter_uninspectable_rule_wins() -> None:
    policy = PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="redact", on_uninspectable="edge"))
    verdict = policy.evaluate(image_context("mail jo@example.com"))
    assert set(verdict.forbid) == {"cloud"}
    assert not verdict.redact
    assert verdict.reason == (
        "personal data (email): redacted before leaving the device; 1 uninspectable part(s) (image): kept on device"
    )


def test_redact_carries_the_tool_argument_rule() -> None:
    policy = PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="redact", restore_in_tool_arguments=False))
    verdict = policy.evaluate(context(personal=EMAIL))
    assert verdict.redact and not verdict.restore_in_tool_arguments
