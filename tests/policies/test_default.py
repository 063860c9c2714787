import pytest

from router.errors import ConfigError
from router.policies.base import Tally, TargetCatalog
from router.policies.default import DefaultPolicy
from tests.policies.helpers import context, views


def test_prefers_its_target_when_undecided() -> None:
    policy = DefaultPolicy(DefaultPolicy.Options(target="cloud"), TargetCatalog(views()))
    assert policy.evaluate(context()).prefer == "cloud"


def test_abstains_once_something_decided() -> None:
    policy = DefaultPolicy(DefaultPolicy.Options(target="cloud"), TargetCatalog(views()))
    assert policy.evaluate(context(tally=Tally(required="edge"))).abstains


def test_unknown_target_fails_at_start_up_listing_targets() -> None:
    with pytest.raises(ConfigError, match="unknown target 'gpu'; configured targets: cloud, edge"):
        DefaultPolicy(DefaultPolicy.Options(target="gpu"), TargetCatalog(views()))
