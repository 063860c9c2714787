"""A third-party-style policy, loaded by import path and by entry point in the tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from router.policies.base import RoutingContext, TargetCatalog, Verdict


class PreferTarget:
    name = "prefer_target"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target: str

    def __init__(self, options: Options, targets: TargetCatalog) -> None:
        self.target = targets.check(options.target, key="target")

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        return Verdict(reason=f"custom policy likes {self.target}", prefer=self.target)
