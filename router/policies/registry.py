"""Finding policy classes by name, and building them from config.

A policy ``type`` is one of the built-in names, a name registered by an
installed package in the ``hybrid_router.policies`` entry-point group, or an
import path ``package.module:Class``. Anything else fails start-up with the
list of valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from router.errors import ConfigError
from router.policies.base import Policy, TargetCatalog
from router.policies.capability import CapabilityPolicy
from router.policies.cascade import CascadePolicy
from router.policies.context_window import ContextWindowPolicy
from router.policies.default import DefaultPolicy
from router.policies.difficulty import DifficultyPolicy
from router.policies.distilled import DistilledPolicy
from router.policies.explicit import ExplicitPolicy
from router.policies.latency import LatencyPolicy
from router.policies.privacy import PrivacyPolicy
from router.policies.semantic import SemanticPolicy
from router.policies.sticky import StickyPolicy
from router.policies.weighted import WeightedPolicy

__all__ = ["BUILTIN_POLICIES", "ENTRY_POINT_GROUP", "build_policies", "policy_requirements", "resolve_policy_class"]

ENTRY_POINT_GROUP = "hybrid_router.policies"

BUILTIN_POLICIES: Mapping[str, Any] = {
    "explicit": ExplicitPolicy,
    "privacy": PrivacyPolicy,
    "context_window": ContextWindowPolicy,
    "capability": CapabilityPolicy,
    "weighted": WeightedPolicy,
    "latency": LatencyPolicy,
    "semantic": SemanticPolicy,
    "difficulty": DifficultyPolicy,
    "cascade": CascadePolicy,
    "distilled": DistilledPolicy,
    "sticky": StickyPolicy,
    "default": DefaultPolicy,
}


def _entry_point_policies() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_policy_class(type_name: str, *, key: str = "type") -> Any:
    """The class for ``type_name``, or a :class:`ConfigError` listing the valid names."""
    if type_name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[type_name]
    plugins = _entry_point_policies()
    if type_name in plugins:
        return plugins[type_name].load()
    if ":" in type_name:
        module_name, _, attr = type_name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{key}: cannot import policy {type_name!r}: {exc}") from exc
    valid = sorted({*BUILTIN_POLICIES, *plugins})
    raise ConfigError(
        f"{key}: unknown policy type {type_name!r}; valid types: {', '.join(valid)}, or an import path 'module:Class'"
    )


def build_policies(
    specs: Sequence[Mapping[str, Any]], targets: TargetCatalog, *, known_needs: frozenset[str] | None = None
) -> list[Policy]:
    """Build the configured policy chain, validating each one's options.

    ``known_needs`` are the feature names the classifier can compute; a
    policy that ``requires`` anything else fails here, at start-up, rather
    than reading a feature that is never filled in.
    """
    policies: list[Policy] = []
    for index, spec in enumerate(specs):
        key = f"policies[{index}]"
        options = dict(spec)
        type_name = str(options.pop("type", ""))
        cls = resolve_policy_class(type_name, key=f"{key}.type")
        options_model: type[BaseModel] | None = getattr(cls, "Options", None)
        try:
            parsed = options_model.model_validate(options) if options_model else options
        except ValidationError as exc:
            raise ConfigError(f"{key} ({type_name}): {_describe(exc, key)}") from exc
        try:
            policy = cls(parsed, targets)
        except ConfigError as exc:
            raise ConfigError(f"{key}.{exc.message}") from exc
        if not callable(getattr(policy, "evaluate", None)):
            raise ConfigError(f"{key}.type: {type_name!r} has no evaluate(ctx) method")
        if not getattr(policy, "name", None):
            policy.name = type_name
        unknown = sorted(set(getattr(policy, "requires", ())) - known_needs) if known_needs is not None else []
        if unknown:
            raise ConfigError(
                f"{key} ({type_name}): requires unknown feature(s) {', '.join(map(repr, unknown))}; "
                f"the classifier provides: {', '.join(sorted(known_needs or ()))}"
            )
        policies.append(policy)
    return policies


def _describe(exc: ValidationError, key: str) -> str:
    return "; ".join(f"{key}.{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors())


def policy_requirements(policies: Sequence[Policy]) -> frozenset[str]:
    """Every model-based feature some policy declares in ``requires``."""
    needs: set[str] = set()
    for policy in policies:
        needs |= set(getattr(policy, "requires", ()))
    return frozenset(needs)
