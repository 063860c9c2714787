"""``explicit``: honour a target pinned with the request's ``model`` field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["ExplicitPolicy"]


class ExplicitPolicy:
    """Require the target the request names in ``model``; abstain on ``auto``.

    A later policy can still forbid the pinned target (personal data pinned to
    the cloud, say); the request then fails with 403 and that policy's reason.
    """

    name = "explicit"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        pass

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        if ctx.pinned is None:
            return Verdict(reason="model=auto: no pin")
        return Verdict(reason=f"pinned by request (model={ctx.request.model})", require=ctx.pinned)
