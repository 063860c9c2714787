from router.policies.context_window import ContextWindowPolicy
from tests.policies.helpers import context, request


def test_fitting_prompt_abstains() -> None:
    assert ContextWindowPolicy().evaluate(context(request("short"))).abstains


def test_prompt_plus_max_tokens_over_the_window_forbids_that_target() -> None:
    ctx = context(request("hi", max_tokens=2100))
    verdict = ContextWindowPolicy().evaluate(ctx)
    need = ctx.features.prompt_tokens + 2100
    assert verdict.forbid == {"edge": f"needs {need} tokens, window is 2048"}


def test_reserve_applies_without_max_tokens() -> None:
    ctx = context(request("x" * 4 * 1900))
    assert "edge" not in ContextWindowPolicy(ContextWindowPolicy.Options(reserve_tokens=0)).evaluate(ctx).forbid
    assert "edge" in ContextWindowPolicy(ContextWindowPolicy.Options(reserve_tokens=256)).evaluate(ctx).forbid
