from router.policies.explicit import ExplicitPolicy
from tests.policies.helpers import context, request


def test_pin_requires_the_target() -> None:
    verdict = ExplicitPolicy().evaluate(context(request(model="cloud"), pinned="cloud"))
    assert verdict.require == "cloud"
    assert verdict.reason == "pinned by request (model=cloud)"


def test_auto_abstains() -> None:
    verdict = ExplicitPolicy().evaluate(context())
    assert verdict.abstains
