from router.classify.personal_data import Span
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
