"""The edge model reports its answers' token log-probabilities, and a cascade can trust them."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_models.runtime import EdgeModel, SamplingOptions
from router.backends.cascade import WANT_TOKEN_LOGPROBS, CascadeBackend, confidence
from router.backends.edge import EdgeBackend
from router.backends.fake import ScriptedReply
from router.chat import ChatRequest
from tests.conftest import cloud_backend
from tests.edge.test_edge_backend import make_backend

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=2)


@pytest.fixture
async def edge(model: EdgeModel, edge_model_dir: Path) -> AsyncIterator[EdgeBackend]:
    backend = make_backend(model, edge_model_dir)
    await backend.start()
    yield backend
    await backend.aclose()


def ask(content: str, **extra: object) -> ChatRequest:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 24, "temperature": 0, **extra}
    return ChatRequest.model_validate(body)


def test_logprobs_are_collected_only_when_asked(model: EdgeModel) -> None:
    ids = model.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    plain = model.generate(ids, SamplingOptions(16))
    scored = model.generate(ids, SamplingOptions(16), logprobs=True)

    assert "".join(plain) == "".join(scored)
    assert plain.token_logprobs is None
    assert scored.token_logprobs is not None and len(scored.token_logprobs) == scored.completion_tokens
    assert all(lp <= 0 and math.isfinite(lp) for lp in scored.token_logprobs)


async def test_the_edge_reports_confidence_when_a_cascade_asks(edge: EdgeBackend) -> None:
    plain = await edge.complete(ask("What is the capital of France?"))
    request = ask("What is the capital of France?")
    request.memo[WANT_TOKEN_LOGPROBS] = True
    scored = await edge.complete(request)

    assert plain.token_logprobs is None
    assert scored.token_logprobs is not None and len(scored.token_logprobs) == scored.usage.completion_tokens
    assert scored.body["choices"][0]["message"] == plain.body["choices"][0]["message"]


async def test_an_easy_greedy_answer_is_more_confident_than_nonsense(edge: EdgeBackend) -> None:
    easy = ask("What is the capital of France?")
    # Tokens drawn at temperature 2 from the whole vocabulary: nonsense the model itself finds unlikely.
    nonsense = ask("What is the capital of France?", temperature=2.0, top_k=49152, seed=7)
    for request in (easy, nonsense):
        request.memo[WANT_TOKEN_LOGPROBS] = True

    sure = confidence((await edge.complete(easy)).token_logprobs)
    unsure = confidence((await edge.complete(nonsense)).token_logprobs)

    assert sure is not None and unsure is not None
    assert sure > -0.6 > unsure


async def test_a_cascade_keeps_the_easy_answer_and_escalates_nonsense(edge: EdgeBackend) -> None:
    cloud = cloud_backend(ScriptedReply(text="Paris."))

    kept = CascadeBackend(edge, cloud, threshold=-0.6)
    answer = await kept.complete(ask("What is the capital of France?"))
    escalated = CascadeBackend(edge, cloud, threshold=-0.6)
    await escalated.complete(ask("What is the capital of France?", temperature=2.0, top_k=49152, seed=7))

    assert "Paris" in answer.body["choices"][0]["message"]["content"]
    assert kept.outcome is not None and not kept.outcome.escalated
    assert escalated.outcome is not None and escalated.outcome.escalated
    assert escalated.outcome.first_seconds > 0 and len(cloud.requests) == 1
