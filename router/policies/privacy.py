"""``privacy``: personal data never leaves the machine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from router.policies.base import RoutingContext, TargetCatalog, Verdict

__all__ = ["PrivacyPolicy"]


class PrivacyPolicy:
    """Keep requests with personal data on local targets, redact it, or reject them.

    ``on_personal_data: edge`` forbids every target that is not local;
    ``redact`` lets the request leave the machine with each value replaced by a
    typed placeholder (restored in the answer: :mod:`router.classify.redaction`);
    ``reject`` forbids every target, so the request fails with 403. A failed
    detector counts as a finding (see :class:`router.features.PersonalData`),
    and with nothing known to redact, ``redact`` then keeps the request local.

    >>> PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="reject")).action
    'reject'
    """

    name = "privacy"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        on_personal_data: Literal["edge", "redact", "reject"] = "edge"

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        self.action = (options or self.Options()).on_personal_data

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        found = ctx.features.personal_data
        if not found.found:
            return Verdict(reason="no personal data found")
        what = "detector failed, assuming personal data" if found.error else f"personal data ({', '.join(found.kinds)})"
        if self.action == "reject":
            return Verdict(reason=f"{what}: rejected", forbid={name: what for name in ctx.targets})
        if self.action == "redact" and not found.error:
            return Verdict(reason=f"{what}: redacted before leaving the device", redact=True)
        forbid = {
            name: f"{what} must stay on this machine"
            for name, view in ctx.targets.items()
            if not view.capabilities.local
        }
        return Verdict(reason=f"{what}: kept on device", forbid=forbid)
