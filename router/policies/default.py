"""``default``: where requests go when no earlier policy decided."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["DefaultPolicy"]


class DefaultPolicy:
    """Prefer ``target`` unless an earlier policy required, preferred or scored.

    A preference, not a requirement: when the target is not ready the router
    falls back to the next allowed target and says so in the reason.
    """

    name = "default"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target: str

    def __init__(self, options: Options, targets: TargetCatalog) -> None:
        self.target = targets.check(options.target, key="target")

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        if not ctx.so_far.undecided:
            return Verdict(reason="already decided")
        return Verdict(reason=f"default target {self.target}", prefer=self.target)
