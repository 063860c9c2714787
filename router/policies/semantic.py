"""``semantic``: send each semantic route to a target, or lean it towards one."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["SemanticPolicy"]


class RouteAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    mode: Literal["require", "prefer", "score"] = "prefer"
    weight: Annotated[float, Field(gt=0)] = 1.0


class SemanticPolicy:
    """Map routes from ``classifier.routes`` to targets.

    ``routes: {coding: cloud}`` prefers ``cloud`` for requests matching the
    ``coding`` route; ``{coding: {target: cloud, mode: require}}`` insists on
    it; ``mode: score`` adds ``weight`` to the target's score, to combine with
    ``weighted``. ``no_match`` optionally names a target to prefer otherwise.
    """

    name = "semantic"
    requires: ClassVar[frozenset[str]] = frozenset({"embedding"})

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        routes: dict[str, str | RouteAction]
        no_match: str | None = None

    def __init__(self, options: Options, targets: TargetCatalog) -> None:
        self.actions: dict[str, RouteAction] = {}
        for route, action in options.routes.items():
            targets.check_route(route, key=f"routes.{route}")
            resolved = RouteAction(target=action) if isinstance(action, str) else action
            targets.check(resolved.target, key=f"routes.{route}.target")
            self.actions[route] = resolved
        self.no_match = targets.check(options.no_match, key="no_match") if options.no_match else None

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        match = ctx.features.semantic
        if match is None:
            return Verdict(reason="no semantic route computed")
        if match.route is None:
            reason = f"no route matched (closest {match.best} at {match.score:.2f})"
            return Verdict(reason=reason, prefer=self.no_match)
        action = self.actions.get(match.route)
        if action is None:
            return Verdict(reason=f"route {match.route} ({match.score:.2f}) has no action")
        reason = f"route {match.route} ({match.score:.2f}) -> {action.target}"
        if action.mode == "require":
            return Verdict(reason=reason, require=action.target)
        if action.mode == "score":
            return Verdict(reason=reason, scores={action.target: action.weight})
        return Verdict(reason=reason, prefer=action.target)
