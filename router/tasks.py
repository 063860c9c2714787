"""A request's task tag: what the application says the request is for.

Clients name the task with an ``x-task`` header or ``metadata.task`` in the
body (OpenAI's ``metadata`` object). The service reads it once
(:func:`tag_task`) into ``ChatRequest.memo[TASK_TAG]``; policies and the
capture of cloud answers read it back with :func:`task_of`. A tag that is too
long or has characters outside ``[A-Za-z0-9._:-]`` is ignored, as if absent.

>>> from router.chat import ChatRequest
>>> request = ChatRequest.model_validate(
...     {"messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "ticket-triage"}}
... )
>>> tag_task(request, None)
>>> task_of(request)
'ticket-triage'
"""

from __future__ import annotations

import re

from router.chat import ChatRequest

__all__ = ["TASK_TAG", "tag_task", "task_of", "valid_task"]

TASK_TAG = "task"
"""The ``ChatRequest.memo`` key the service stores a valid task tag under."""

_TAG = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def valid_task(value: object) -> bool:
    """Whether ``value`` is a usable task tag: 1-64 characters of ``[A-Za-z0-9._:-]``."""
    return isinstance(value, str) and _TAG.fullmatch(value) is not None


def tag_task(request: ChatRequest, header: str | None) -> None:
    """Store the task tag in the memo: the ``x-task`` header if valid, else a valid ``metadata.task``."""
    if valid_task(header):
        request.memo[TASK_TAG] = header
        return
    metadata = (request.model_extra or {}).get("metadata")
    if isinstance(metadata, dict) and valid_task(metadata.get("task")):
        request.memo[TASK_TAG] = metadata["task"]


def task_of(request: ChatRequest) -> str | None:
    """The request's task tag, once :func:`tag_task` has read it; None when it has none."""
    tag = request.memo.get(TASK_TAG)
    return tag if isinstance(tag, str) else None
