"""``context_window``: send prompts too long for a target elsewhere."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["ContextWindowPolicy"]


class ContextWindowPolicy:
    """Forbid targets whose window cannot hold the prompt plus the answer.

    When the request sets no ``max_tokens``, ``reserve_tokens`` are assumed
    for the answer, so a prompt that fills the window exactly is not sent
    where it could not be answered.
    """

    name = "context_window"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        reserve_tokens: Annotated[int, Field(ge=0)] = 256

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        self.reserve = (options or self.Options()).reserve_tokens

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        need = ctx.features.prompt_tokens + (ctx.features.max_tokens or self.reserve)
        forbid = {
            name: f"needs {need} tokens, window is {window}"
            for name, view in ctx.targets.items()
            if (window := view.capabilities.context_window) is not None and need > window
        }
        if not forbid:
            return Verdict(reason=f"{need} tokens fit every target")
        return Verdict(reason=f"prompt too long for {', '.join(forbid)} ({need} tokens)", forbid=forbid)
