"""``x-deadline-ms`` through the gateway: the latency policy sees it, the trail shows the prediction."""

from __future__ import annotations

from router.backends.fake import ScriptedReply
from tests.conftest import ClientFactory, chat_body, cloud_backend, edge_backend, make_settings

POLICIES = [{"type": "explicit"}, {"type": "privacy", "on_personal_data": "edge"}, {"type": "latency"},
            {"type": "default", "target": "edge"}]  # fmt: skip


def settings():  # type: ignore[no-untyped-def]
    return make_settings(
        policies=POLICIES,
        targets={
            "edge": {"type": "fake", "latency_ms": 300},
            "cloud": {"type": "fake", "local": False, "latency_ms": 900, "price_per_mtok": {"input": 1, "output": 2}},
        },
    )


def test_the_deadline_header_reaches_the_policy_and_the_trail_shows_each_prediction(client_for: ClientFactory) -> None:
    client = client_for(settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()})

    tight = client.post("/v1/route", json=chat_body(max_tokens=1, stream=True), headers={"x-deadline-ms": "500"})
    loose = client.post("/v1/route", json=chat_body(max_tokens=1), headers={"x-deadline-ms": "5000"})

    entry = next(e for e in tight.json()["trail"] if e["policy"] == "latency")
    assert entry["reason"].startswith("deadline 500 ms (x-deadline-ms, first token): edge 300 ms, cloud 900 ms")
    assert entry["forbid"] == {"cloud": "predicted 900 ms, over the 500 ms deadline"}
    assert tight.json()["target"] == "edge"
    assert loose.json()["target"] == "edge" and "the cheapest predicted to meet it" in loose.json()["reason"]


def test_served_answers_feed_the_live_estimates(client_for: ClientFactory) -> None:
    edge = edge_backend(ScriptedReply(text="one two three four", piece_delay_s=0.01))
    client = client_for(settings(), backends={"edge": edge, "cloud": cloud_backend()})

    assert client.post("/v1/chat/completions", json=chat_body(stream=True)).status_code == 200

    live = client.app.state.gateway.router.timing.get("edge")  # type: ignore[attr-defined]
    assert live is not None and live.samples == 1 and live.tpot_ms is not None and live.tpot_ms >= 5


def test_a_bad_deadline_header_is_a_400_naming_it(client_for: ClientFactory) -> None:
    client = client_for(settings(), backends={"edge": edge_backend(), "cloud": cloud_backend()})

    for bad in ("soon", "-5", "0", "99999999999"):
        answer = client.post("/v1/chat/completions", json=chat_body(), headers={"x-deadline-ms": bad})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "x-deadline-ms"
