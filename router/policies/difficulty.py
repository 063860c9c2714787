"""``difficulty``: hard requests to the cloud, easy ones to the edge."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from router.errors import ConfigError
from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["DifficultyPolicy"]


class DifficultyPolicy:
    """Prefer ``cloud`` when P(edge worse than cloud) reaches ``threshold``, else ``edge``.

    The score comes from the trained difficulty head, or from the rules when
    none is loaded (the trail says which). Pick the threshold for the cloud
    share you can afford: ``hybrid-router router calibrate --cloud-share 0.3``.
    Preferences, not requirements: a cloud target that is not ready falls back
    to the edge, and the reason says so.
    """

    name = "difficulty"
    requires: ClassVar[frozenset[str]] = frozenset({"embedding", "difficulty"})

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
        edge: str | None = None
        cloud: str | None = None

    def __init__(self, options: Options, targets: TargetCatalog) -> None:
        edge = options.edge or targets.first(local=True)
        cloud = options.cloud or targets.first(local=False)
        if edge is None or cloud is None:
            raise ConfigError("edge/cloud: the difficulty policy needs a local and a non-local target")
        self.edge = targets.check(edge, key="edge")
        self.cloud = targets.check(cloud, key="cloud")
        self.threshold = options.threshold

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        difficulty = ctx.features.difficulty
        if difficulty is None:
            return Verdict(reason="no difficulty score")
        score, source = difficulty.score, difficulty.source
        if score >= self.threshold:
            return Verdict(reason=f"hard ({source} {score:.2f} >= {self.threshold:.2f})", prefer=self.cloud)
        return Verdict(reason=f"easy ({source} {score:.2f} < {self.threshold:.2f})", prefer=self.edge)
