"""Property: whatever the targets do, every request ends cleanly and retries stay within the budget.

Hypothesis draws what each call to each target does (answer, or fail with
any of the error tree's upstream errors, before output or mid-stream) and a
sequence of requests (streamed or not, routed or pinned). The cloud retries
and falls back to the edge, the edge falls back to the cloud. For every
request the client gets exactly one of:

* a full answer from the target named in ``x-route-target``;
* a clean error: OpenAI's shape, a mapped status, never an internal error;
* a stream of that target's output ending in one error event and ``[DONE]``.

And each target's calls stay within its retry budget: retries (calls beyond
each request's first) number at most ``budget_floor + budget_ratio * requests``
(the whole example runs inside one budget window), and no request gets more
than ``max_attempts`` calls from one target.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from router.backends.fake import ScriptedBackend, ScriptedReply
from router.chat import ChatRequest
from router.errors import (
    BackendBusy,
    BackendError,
    ContentFiltered,
    HybridRouterError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from service.app import create_app
from tests.conftest import cloud_backend, edge_backend, make_settings

RETRIES = {"max_attempts": 3, "base_delay_s": 0, "max_delay_s": 0.05, "budget_ratio": 0.2, "budget_floor": 2,
           "budget_window_s": 3600}  # fmt: skip
TEXT = {"edge": "edge says hi", "cloud": "cloud says hi there"}
MAPPED_STATUSES = {400, 429, 502, 503, 504}

ERRORS: list[Callable[[], HybridRouterError]] = [
    lambda: UpstreamConnectError("cannot connect"),
    lambda: UpstreamRateLimited("slow down", retry_after=0.01),
    lambda: UpstreamRateLimited("quota", retry_after=5),  # past max_delay_s: not waited for
    lambda: BackendError("upstream returned 503"),
    lambda: UpstreamTimeout("no first byte"),
    lambda: UpstreamAuthError("our key was rejected"),
    lambda: UpstreamBadRequest("bad request"),
    lambda: ContentFiltered("filtered"),
    lambda: UpstreamProtocolError("garbage"),
    lambda: BackendBusy("queue full", retry_after=1),
]

# What one call does: "ok", ("fail", error index), or ("cut", error index) after the first content chunk.
Step = str | tuple[str, int]
steps = st.one_of(
    st.just("ok"),
    st.tuples(st.just("fail"), st.integers(0, len(ERRORS) - 1)),
    st.tuples(st.just("cut"), st.integers(0, len(ERRORS) - 1)),
)
calls = st.lists(steps, max_size=12)
requests = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["auto", "auto", "cloud", "edge"])), min_size=1, max_size=6
)


def scripted(steps: list[Step], text: str) -> Callable[[ChatRequest], ScriptedReply]:
    """Each call takes the next step; once they run out, every call answers."""
    queue = list(steps)

    def reply(_: ChatRequest) -> ScriptedReply:
        step = queue.pop(0) if queue else "ok"
        if step == "ok":
            return ScriptedReply(text=text)
        kind, index = step
        return ScriptedReply(text=text, error=ERRORS[index](), fail_after=1 if kind == "cut" else None)

    return reply


def check_answer(response: Any, stream: bool) -> None:
    """One of: a full answer, a clean error, a stream ending in an error event and [DONE]."""
    if response.status_code != 200:
        assert response.status_code in MAPPED_STATUSES, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] not in (None, "internal_error") and body["error"]["message"]
        return
    target = response.headers["x-route-target"]
    if not stream:
        assert response.json()["choices"][0]["message"]["content"] == TEXT[target]
        return
    events = [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(event) for event in events[:-1]]
    errors = [index for index, chunk in enumerate(chunks) if "error" in chunk]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    if not errors:
        assert text == TEXT[target]
        return
    assert errors == [len(chunks) - 1], "one error event, last before [DONE]"
    assert chunks[-1]["error"]["code"] not in (None, "internal_error")
    assert TEXT[target].startswith(text) and text, "the output that came first is the target's"


def check_budget(backend: ScriptedBackend) -> None:
    per_request = Counter(request.prompt_text for request in backend.requests)
    retries = sum(per_request.values()) - len(per_request)
    assert retries <= RETRIES["budget_floor"] + RETRIES["budget_ratio"] * len(per_request)
    assert max(per_request.values(), default=0) <= RETRIES["max_attempts"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cloud_calls=calls, edge_calls=calls, asked=requests)
def test_every_request_ends_cleanly_within_the_retry_budget(
    cloud_calls: list[Step], edge_calls: list[Step], asked: list[tuple[bool, str]]
) -> None:
    cloud = cloud_backend(scripted(cloud_calls, TEXT["cloud"]))  # type: ignore[arg-type]
    edge = edge_backend(scripted(edge_calls, TEXT["edge"]))  # type: ignore[arg-type]
    targets = make_settings().model_dump()["targets"]
    # Both guarded here, so the edge's calls are held to the budget too.
    targets["cloud"].update(fallback=["edge"], retries=RETRIES, circuit={"failures": 4, "open_s": 60})
    targets["edge"].update(fallback=["cloud"], retries=RETRIES, circuit={"failures": 4, "open_s": 60})
    policies = [{"type": "explicit"}, {"type": "default", "target": "cloud"}]
    app = create_app(
        make_settings(targets=targets, policies=policies),
        backends={"edge": edge, "cloud": cloud},
        registry=CollectorRegistry(),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        for index, (stream, model) in enumerate(asked):
            body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": f"question {index}"}]}
            check_answer(client.post("/v1/chat/completions", json=body), stream)

    check_budget(cloud)
    check_budget(edge)
