import pytest

from router.policies.capability import CapabilityPolicy
from tests.policies.helpers import context, request


@pytest.mark.parametrize(
    ("extra", "need"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "json_schema"),
        ({"response_format": {"type": "json_object"}}, "json_schema"),
    ],
)
def test_needs_forbid_targets_without_them(extra: dict[str, object], need: str) -> None:
    verdict = CapabilityPolicy().evaluate(context(request(**extra)))
    assert verdict.forbid == {"edge": f"does not support {need}"}


def test_images_need_image_support() -> None:
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    req = request()
    req = req.model_validate({"messages": [{"role": "user", "content": image}]})
    assert CapabilityPolicy().evaluate(context(req)).forbid == {"edge": "does not support images"}


def test_plain_text_abstains() -> None:
    assert CapabilityPolicy().evaluate(context()).abstains
