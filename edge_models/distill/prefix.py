"""The student's view of a prompt: a distilled route's fixed system prompt, left out.

An application sends the same long system prompt with every request (77 labels
and their instructions: ~570 tokens against a 10-30 token customer message).
Training on it would cost every row twenty times its own length, and serving it
would dominate the edge's time to first token. So a system prompt that the
training data repeats is recognised by its hash and replaced, for the student
only, by a short alias (``Task 3f2a9c1e.``): the student learns the task from the
alias, the manifest records hash -> alias, and the edge backend applies the same
replacement to every request it serves with that model. The cloud, the capture
store and the client never see the alias.

Training, ``distill eval`` and serving all call :func:`student_messages`, so the
student is scored exactly as it is served.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MIN_FIXED_CHARS", "MIN_FIXED_SHARE", "alias_for", "find_fixed_prompts", "system_hash", "student_messages"]

MIN_FIXED_CHARS = 200
"""Shorter system prompts cost little to keep; they are left as they are."""

MIN_FIXED_SHARE = 0.02
"""A system prompt is a route's fixed prompt when at least this share of rows (and 8 of them) carry it."""


def system_hash(text: str) -> str:
    """The 16-hex-digit sha256 prefix that names a fixed system prompt.

    >>> system_hash("You classify.") == system_hash("You classify.\\n")
    True
    """
    return hashlib.sha256(text.strip().encode()).hexdigest()[:16]


def alias_for(digest: str) -> str:
    """The short system prompt the student sees in place of the fixed one."""
    return f"Task {digest[:8]}."


def _system_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    if messages and messages[0].get("role") in ("system", "developer"):
        content = messages[0].get("content")
        return content if isinstance(content, str) else None
    return None


def find_fixed_prompts(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """hash -> alias for every long system prompt that many rows share.

    >>> rows = [{"messages": [{"role": "system", "content": "L" * 300}, {"role": "user", "content": str(i)}]}
    ...         for i in range(10)]
    >>> list(find_fixed_prompts(rows).values()) == [alias_for(system_hash("L" * 300))]
    True
    """
    counts: Counter[str] = Counter()
    total = 0
    for row in rows:
        total += 1
        text = _system_text(row["messages"])
        if text is not None and len(text.strip()) >= MIN_FIXED_CHARS:
            counts[system_hash(text)] += 1
    floor = max(8, MIN_FIXED_SHARE * total)
    return {digest: alias_for(digest) for digest, n in counts.items() if n >= floor}


def student_messages(messages: Sequence[Mapping[str, Any]], aliases: Mapping[str, str]) -> list[dict[str, Any]]:
    """``messages`` as the student sees them: a known fixed system prompt replaced by its alias.

    >>> long = "You label banking messages. " * 10
    >>> aliases = {system_hash(long): "Task ab12cd34."}
    >>> student_messages([{"role": "system", "content": long}, {"role": "user", "content": "hi"}], aliases)
    [{'role': 'system', 'content': 'Task ab12cd34.'}, {'role': 'user', 'content': 'hi'}]
    """
    out = [dict(m) for m in messages]
    text = _system_text(messages)
    if aliases and text is not None and (alias := aliases.get(system_hash(text))) is not None:
        out[0] = {"role": "system", "content": alias}
    return out
