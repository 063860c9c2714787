"""RouteLLM's router metrics: APGR, CPT and the quality / cloud-share curve.

Definitions follow ``routellm/evals/evaluate.py`` and ``benchmarks.py``
(lm-sys/RouteLLM): thresholds are the ``bins``-quantiles of the router's
scores; at each threshold the requests scoring at or above it go to the
strong model, giving one point (share of strong calls, quality). Then

* ``auc``: the trapezoid area under quality (0..1) over strong share (0..1);
* ``apgr``: ``(auc - weak_auc) / (strong_auc - weak_auc)``, the average
  performance gap recovered (0.5 for a random router, 1.0 is ideal);
* ``cpt(x)``: the strong share needed to recover ``x`` of the gap between
  the weak and strong models, interpolated along the curve.

>>> import numpy as np
>>> weak = np.array([1, 0, 0, 1]); strong = np.array([1, 1, 1, 1])
>>> perfect = evaluate_router(np.array([0.1, 0.9, 0.8, 0.2]), weak, strong, bins=4)
>>> round(perfect.apgr, 3), round(perfect.cpt50, 3)
(1.0, 0.25)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RouterCurve", "evaluate_router", "random_baseline", "threshold_for_share"]

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class RouterCurve:
    """One router's points and summary metrics."""

    strong_share: list[float]
    quality: list[float]
    thresholds: list[float]
    weak_quality: float
    strong_quality: float
    auc: float
    apgr: float
    cpt50: float
    cpt80: float
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "auc": round(self.auc, 4),
            "weak_quality": round(self.weak_quality, 4),
            "strong_quality": round(self.strong_quality, 4),
            **{k: round(v, 4) for k, v in self.extra.items()},
        }


def _points(scores: Array, weak: Array, strong: Array, bins: int) -> tuple[Array, Array, Array]:
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)))
    shares, quality = [], []
    for index, threshold in enumerate(thresholds):
        # The top threshold uses ">" so the curve reaches 0% strong calls, as RouteLLM does.
        chosen = scores > threshold if index == len(thresholds) - 1 else scores >= threshold
        shares.append(chosen.mean())
        quality.append(np.where(chosen, strong, weak).mean())
    order = np.argsort(shares, kind="stable")
    return np.asarray(shares)[order], np.asarray(quality)[order], thresholds[order]


def _cpt(fraction: float, shares: Array, quality: Array, weak_q: float, strong_q: float) -> float:
    target = weak_q + fraction * (strong_q - weak_q)
    # Quality is not always monotone in the share; like RouteLLM, interpolate
    # along the curve, here over its running maximum so the answer is defined.
    return float(np.interp(target, np.maximum.accumulate(quality), shares))


def evaluate_router(scores: Array, weak: Array, strong: Array, *, bins: int = 10) -> RouterCurve:
    """Metrics for a router whose higher ``scores`` mean "send to the strong model"."""
    scores = np.asarray(scores, dtype=float)
    weak = np.asarray(weak, dtype=float)
    strong = np.asarray(strong, dtype=float)
    shares, quality, thresholds = _points(scores, weak, strong, bins)
    weak_q, strong_q = float(weak.mean()), float(strong.mean())
    span = shares[-1] - shares[0]
    auc = float(np.trapezoid(quality, shares))
    apgr = (auc - weak_q * span) / ((strong_q - weak_q) * span) if strong_q != weak_q and span > 0 else float("nan")
    return RouterCurve(
        strong_share=shares.tolist(),
        quality=quality.tolist(),
        thresholds=thresholds.tolist(),
        weak_quality=weak_q,
        strong_quality=strong_q,
        auc=auc,
        apgr=apgr,
        cpt50=_cpt(0.5, shares, quality, weak_q, strong_q),
        cpt80=_cpt(0.8, shares, quality, weak_q, strong_q),
    )


def random_baseline(weak: Array, strong: Array, *, bins: int = 10, seeds: int = 20) -> dict[str, float]:
    """The same metrics for routers that score at random, averaged over ``seeds``."""
    runs = [
        evaluate_router(np.random.default_rng(seed).random(len(weak)), weak, strong, bins=bins) for seed in range(seeds)
    ]
    return {
        "apgr": round(float(np.mean([r.apgr for r in runs])), 4),
        "cpt50": round(float(np.mean([r.cpt50 for r in runs])), 4),
        "cpt80": round(float(np.mean([r.cpt80 for r in runs])), 4),
        "auc": round(float(np.mean([r.auc for r in runs])), 4),
    }


def threshold_for_share(scores: Array, cloud_share: float) -> float:
    """The threshold that sends ``cloud_share`` of these requests to the cloud (score >= threshold).

    >>> threshold_for_share(np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
    0.3
    """
    if not 0 <= cloud_share <= 1:
        raise ValueError("cloud_share must be between 0 and 1")
    ordered = np.sort(np.asarray(scores, dtype=float))[::-1]
    count = round(cloud_share * len(ordered))
    if count == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float(ordered[count - 1])
