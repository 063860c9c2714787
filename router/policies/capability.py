"""``capability``: tools, JSON schemas and images go where they are supported."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["CapabilityPolicy"]


class CapabilityPolicy:
    """Forbid targets that lack a capability the request needs."""

    name = "capability"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        pass

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        needs = []
        if ctx.features.wants_tools:
            needs.append("tools")
        if ctx.features.wants_json:
            needs.append("json_schema")
        if ctx.features.has_images:
            needs.append("images")
        if not needs:
            return Verdict(reason="no special capability needed")
        forbid = {}
        for name, view in ctx.targets.items():
            missing = [need for need in needs if not getattr(view.capabilities, need)]
            if missing:
                forbid[name] = f"does not support {', '.join(missing)}"
        return Verdict(reason=f"request needs {', '.join(needs)}", forbid=forbid)
