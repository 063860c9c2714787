"""Every config target type has a backend, and the registry builds each one."""

from __future__ import annotations

import importlib

import pytest

from router.backends.base import Backend
from router.backends.registry import BACKEND_TYPES, create_backend
from router.config import TARGET_TYPES, FakeTargetConfig


def test_every_target_type_has_a_backend() -> None:
    # ``fake`` is built by the registry itself, from its config alone.
    assert set(BACKEND_TYPES) | {"fake"} == TARGET_TYPES


@pytest.mark.parametrize("target_type", sorted(BACKEND_TYPES))
def test_each_registered_backend_names_a_class_that_can_be_imported(target_type: str) -> None:
    module_name, _, class_name = BACKEND_TYPES[target_type].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    for member in ("start", "aclose", "readiness", "complete", "stream", "stats"):
        assert hasattr(cls, member), f"{cls.__name__} has no {member}"


def test_the_fake_is_built_from_its_config() -> None:
    backend = create_backend("demo", FakeTargetConfig(type="fake", reply="hi"))
    assert isinstance(backend, Backend)
    assert backend.name == "demo"
