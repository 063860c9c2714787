from __future__ import annotations

from typing import Any

from router.backends.base import Capabilities, Readiness
from router.chat import ChatRequest
from router.classify.classifier import RequestClassifier
from router.features import Features, PersonalData, Span
from router.policies.base import RoutingContext, Tally, TargetView


def request(content: str = "hi", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def views(**overrides: dict[str, Any]) -> dict[str, TargetView]:
    base = {
        "edge": TargetView("edge", "small", Capabilities(context_window=2048, local=True), Readiness(True),
                           quality=0.3, latency_ms=100),
        "cloud": TargetView("cloud", "big", Capabilities(tools=True, json_schema=True, images=True,
                                                         context_window=128_000), Readiness(True),
                            price_input=1.0, price_output=4.0, quality=0.9, latency_ms=800),
    }  # fmt: skip
    for name, changes in overrides.items():
        current = base[name]
        base[name] = TargetView(**{slot: getattr(current, slot) for slot in current.__slots__} | changes)
    return base


def context(
    req: ChatRequest | None = None,
    *,
    targets: dict[str, TargetView] | None = None,
    pinned: str | None = None,
    tally: Tally | None = None,
    personal: list[Span] | None = None,
    detector_error: str | None = None,
) -> RoutingContext:
    req = req or request()
    features = RequestClassifier().classify_now(req)
    if personal is not None or detector_error is not None:
        spans = tuple(personal or ())
        pd = PersonalData(found=bool(spans) or detector_error is not None, spans=spans, error=detector_error)
        features = Features(**{slot: getattr(features, slot) for slot in features.__slots__} | {"personal_data": pd})
    return RoutingContext(req, features, targets or views(), pinned, tally or Tally())
