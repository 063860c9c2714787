"""``cascade``: answer on the edge first, escalate to the cloud when the answer looks unsure."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router.backends.cascade import Signal
from router.errors import ConfigError
from router.policies.base import Cascade, RoutingContext, TargetCatalog, Verdict

__all__ = ["CascadePolicy"]


class CascadePolicy:
    """Prefer ``edge``, and let the router run it as a cascade that escalates to ``cloud``.

    The edge answers in full; when its answer's confidence (``signal``: the
    mean or the minimum token log-probability) is below ``threshold`` the
    request goes to ``cloud`` and the client gets the cloud's answer (see
    :mod:`router.backends.cascade`; ``bench/cascade.py`` measures the signals
    and the escalation share each threshold gives).

    Escalation obeys the rest of the chain: a cloud that a policy forbids (the
    ``privacy`` policy keeping personal data local) or that cannot serve is
    never escalated to, and the trail says so; under ``on_personal_data:
    redact`` the escalated request is redacted. A request pinned to a target
    (``model: edge``), or one that another policy sends elsewhere, is not
    cascaded.

    >>> from router.policies.base import TargetView
    >>> from router.backends.base import Capabilities, Readiness
    >>> view = lambda name, local: TargetView(name, "m", Capabilities(local=local), Readiness(True))
    >>> catalog = TargetCatalog({"edge": view("edge", True), "cloud": view("cloud", False)})
    >>> CascadePolicy(CascadePolicy.Options(threshold=-1.0), catalog).cascade
    Cascade(first='edge', then='cloud', threshold=-1.0, signal='mean', blocked='', redact=False)
    """

    name = "cascade"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        edge: str | None = None
        cloud: str | None = None
        # No default: what a threshold escalates depends on the model and the traffic (bench/cascade.py).
        threshold: Annotated[float, Field(le=0)] = Field(
            description="Escalate when the edge answer's signal (a log-probability, <= 0) is below this."
        )
        signal: Signal = "mean"

    def __init__(self, options: Options, targets: TargetCatalog) -> None:
        edge = options.edge or targets.first(local=True)
        cloud = options.cloud or targets.first(local=False)
        if edge is None or cloud is None:
            raise ConfigError("edge/cloud: the cascade policy needs a local and a non-local target")
        targets.check(edge, key="edge")
        targets.check(cloud, key="cloud")
        if edge == cloud:
            raise ConfigError(f"cloud: the cascade escalates from {edge} to another target, not to itself")
        self.cascade = Cascade(edge, cloud, options.threshold, options.signal)

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        edge, cloud = self.cascade.first, self.cascade.then
        if ctx.pinned is not None:
            return Verdict(reason=f"pinned to {ctx.pinned}: no cascade")
        if edge in ctx.so_far.forbidden:
            return Verdict(reason=f"{edge} not allowed: no cascade")
        threshold, signal = self.cascade.threshold, self.cascade.signal
        reason = f"{edge} first; {cloud} if its {signal} token logprob < {threshold:.2f}"
        return Verdict(reason=reason, prefer=edge, cascade=self.cascade)
