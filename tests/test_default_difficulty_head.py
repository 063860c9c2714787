"""The shipped difficulty head, as the embedded default config uses it."""

from __future__ import annotations

import json

import pytest

from router.backends.base import Readiness
from router.classify.difficulty import DEFAULT_HEAD
from service.settings import load_settings
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings

pytestmark = pytest.mark.model

ASSETS = DEFAULT_HEAD.parent
WORD_PROBLEM = (
    "Janet has 3 apples and buys 5 times as many oranges as apples, then gives away half of the fruit. "
    "How many pieces of fruit does she have left?"
)


@pytest.mark.parametrize("encoder", ["static", "minilm"])
def test_a_head_ships_for_each_encoder_trained_on_the_edge_models_labels(encoder: str) -> None:
    report = json.loads((ASSETS / f"difficulty_head.{encoder}.json").read_text())
    assert (ASSETS / f"difficulty_head.{encoder}.onnx").is_file()
    assert (report["weak_col"], report["strong_col"]) == ("edge_correct", "gpt4_correct")
    # Better than routing at random on rows it never saw.
    assert report["validation"]["apgr"] > report["random"]["apgr"] + 0.03


def test_embedded_default_sends_a_hard_prompt_to_a_ready_cloud_and_keeps_an_easy_one(
    client_for: ClientFactory,
) -> None:
    policies = load_settings(None).policies
    threshold = next(p["threshold"] for p in policies if p["type"] == "difficulty")
    client = client_for(make_settings(policies=policies))

    hard = client.post("/v1/route", json=chat_body(WORD_PROBLEM)).json()
    easy = client.post("/v1/route", json=chat_body("What is the capital of France?")).json()

    assert hard["features"]["difficulty"]["source"] == "head:static-256"
    assert hard["features"]["difficulty"]["score"] >= threshold > easy["features"]["difficulty"]["score"]
    assert (hard["target"], easy["target"]) == ("cloud", "edge")
    assert {"policy": "difficulty", "reason": hard["trail"][4]["reason"], "prefer": "cloud"} == hard["trail"][4]


def test_without_a_cloud_key_hard_prompts_stay_local_and_say_why(client_for: ClientFactory) -> None:
    cloud = cloud_backend(ready=Readiness(ready=False, reason="no API key: OPENAI_API_KEY is not set"))
    client = client_for(
        make_settings(policies=load_settings(None).policies), backends={"edge": edge_backend(), "cloud": cloud}
    )

    answer = client.post("/v1/chat/completions", json=chat_body(WORD_PROBLEM))

    assert answer.status_code == 200
    assert answer.headers["x-route-target"] == "edge"
    assert "cloud not ready" in answer.headers["x-route-reason"]
    assert cloud.requests == []
