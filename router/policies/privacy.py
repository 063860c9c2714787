"""``privacy``: personal data never leaves the machine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from router.features import PersonalData
from router.policies.base import RoutingContext, TargetCatalog, TargetView, Verdict

__all__ = ["PrivacyPolicy"]


class PrivacyPolicy:
    """Keep requests with personal data on local targets, redact it, or reject them.

    The classifier reads every string the request would send upstream (see
    :mod:`router.surface`), not just message text. Then:

    * ``on_personal_data: edge`` forbids every target that is not local;
      ``redact`` lets the request leave with each value replaced by a tagged
      placeholder (restored in the answer: :mod:`router.backends.redacting`);
      ``reject`` forbids every target, so the request fails with 403. A failed
      or late detector counts as a finding, and with nothing known to redact,
      ``redact`` then keeps the request local.
    * ``on_uninspectable`` decides on what cannot be read as text (image,
      audio and file bytes): ``allow`` (the default: such parts go where the
      other policies send them, and the trail lists them), ``edge`` or ``reject``.
    * ``restore_in_tool_arguments``: with ``redact``, whether values may be
      restored into the arguments of tool calls the model makes. Credentials
      never are, whatever this says.

    >>> PrivacyPolicy(PrivacyPolicy.Options(on_personal_data="reject")).action
    'reject'
    """

    name = "privacy"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        on_personal_data: Literal["edge", "redact", "reject"] = "edge"
        on_uninspectable: Literal["allow", "edge", "reject"] = Field(
            default="allow",
            description="Image, audio and file bytes cannot be scanned: send them on (allow), keep local, or reject.",
        )
        restore_in_tool_arguments: bool = Field(
            default=True, description="With redact: restore values into tool-call arguments (credentials never)."
        )

    def __init__(self, options: Options | None = None, targets: TargetCatalog | None = None) -> None:
        self.options = options or self.Options()
        self.action = self.options.on_personal_data

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        found = ctx.features.personal_data
        personal = self._personal(found, ctx.targets)
        unread = self._unread(found, ctx.targets)
        if personal is None:
            return unread or Verdict(reason="no personal data found")
        if unread is None:
            return personal
        reason = f"{personal.reason}; {unread.reason}"
        if not unread.forbid:
            return replace(personal, reason=reason)
        # Redaction cannot reach into bytes it cannot read: the stricter verdict holds whole.
        return Verdict(reason=reason, forbid={**personal.forbid, **unread.forbid})

    def _personal(self, found: PersonalData, targets: Mapping[str, TargetView]) -> Verdict | None:
        if not found.found:
            return None
        what = "detector failed, assuming personal data" if found.error else f"personal data ({', '.join(found.kinds)})"
        if self.action == "reject":
            return Verdict(reason=f"{what}: rejected", forbid=dict.fromkeys(targets, what))
        if self.action == "redact" and not found.error:
            restore = self.options.restore_in_tool_arguments
            return Verdict(
                reason=f"{what}: redacted before leaving the device", redact=True, restore_in_tool_arguments=restore
            )
        return Verdict(reason=f"{what}: kept on device", forbid=_remote(targets, f"{what} must stay on this machine"))

    def _unread(self, found: PersonalData, targets: Mapping[str, TargetView]) -> Verdict | None:
        if not found.uninspectable:
            return None
        kinds = sorted({item.kind for item in found.uninspectable})
        what = f"{len(found.uninspectable)} uninspectable part(s) ({', '.join(kinds)})"
        policy = self.options.on_uninspectable
        if policy == "reject":
            return Verdict(reason=f"{what}: rejected", forbid=dict.fromkeys(targets, what))
        if policy == "edge":
            return Verdict(
                reason=f"{what}: kept on device", forbid=_remote(targets, f"{what} must stay on this machine")
            )
        return Verdict(reason=f"{what} sent unread (on_uninspectable: allow)")


def _remote(targets: Mapping[str, TargetView], why: str) -> dict[str, str]:
    return {name: why for name, view in targets.items() if not view.capabilities.local}
