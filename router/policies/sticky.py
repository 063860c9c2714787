"""``sticky``: once a conversation has escalated to the cloud, its later turns stay there."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router.chat import ChatRequest
from router.policies.base import RoutingContext, TargetCatalog, Verdict
from router.sessions import MemorySessions, SessionStore, SharedSessions, conversation_key
from router.state.base import KeyValueStore

__all__ = ["StickyPolicy"]

# Larger than any other policy's scores, so the conversation's target wins the
# ranking; still a score, so forbids (privacy) and readiness both prevail.
STICKY_SCORE = 100.0


class StickyPolicy:
    """Keep a conversation on the cloud target it escalated to, for ``ttl_s`` after its last turn there.

    A switch of model mid-conversation changes tone, knowledge and tool
    behaviour under the user; an easy follow-up to a hard question ("and in
    Python?") also reads easy on its own. The conversation is named by
    ``x-session-id`` or by a hash of its opening messages
    (:func:`router.sessions.conversation_key`). Place it after ``privacy``:
    a target forbidden so far is never chosen, and the trail says so.

    >>> StickyPolicy.Options().ttl_s
    1800.0
    """

    name = "sticky"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        ttl_s: Annotated[float, Field(gt=0)] = 1800.0
        max_sessions: Annotated[int, Field(ge=1)] = 100_000

    def __init__(self, options: Options, targets: TargetCatalog, *, store: SessionStore | None = None) -> None:
        self.ttl_s = options.ttl_s
        self.max_sessions = options.max_sessions
        if store is None:
            store = MemorySessions(ttl_s=options.ttl_s, max_entries=options.max_sessions)
        self.store: SessionStore = store
        self._remote = frozenset(name for name in targets if not targets[name].capabilities.local)

    def share(self, kv: KeyValueStore) -> None:
        """Keep sessions in the shared state store from now on (every worker and replica sees them)."""
        if not isinstance(self.store, SharedSessions):
            self.store = SharedSessions(kv, ttl_s=self.ttl_s, max_entries=self.max_sessions)

    async def prepare(self, request: ChatRequest) -> None:
        """Before routing: fetch the conversation's shared entry, if sessions are shared."""
        if isinstance(self.store, SharedSessions):
            await self.store.load(conversation_key(request))

    def evaluate(self, ctx: RoutingContext) -> Verdict:
        key = conversation_key(ctx.request)
        stuck = self.store.get(key)
        if stuck is None or stuck.target not in ctx.targets:
            return Verdict(reason="no escalated conversation")
        what = f"conversation {_short(key)} escalated to {stuck.target}"
        if stuck.target in ctx.so_far.forbidden:
            return Verdict(reason=f"{what}, but {stuck.target} is forbidden: {ctx.so_far.forbidden[stuck.target]}")
        return Verdict(reason=f"sticky: {what} (ttl {self.ttl_s:g} s)", scores={stuck.target: STICKY_SCORE})

    def observe(self, request: ChatRequest, target: str, ok: bool) -> None:
        """After a request was served: a conversation answered by the cloud sticks to it."""
        if ok and target in self._remote:
            self.store.put(conversation_key(request), target)


def _short(key: str) -> str:
    kind, _, value = key.partition(":")
    return f"{kind} {value[:12]}"
