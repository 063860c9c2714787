"""APGR, CPT and calibration on small hand-made examples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from router.training.metrics import evaluate_router, random_baseline, threshold_for_share

# Ten questions: the weak model gets 1-5 wrong... the strong one gets all but #9 right.
WEAK = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
STRONG = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])


def test_perfect_router_recovers_the_whole_gap_first() -> None:
    # Highest scores exactly where the strong model helps (weak wrong, strong right).
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.3, 0.25, 0.2, 0.15, 0.1])
    curve = evaluate_router(scores, WEAK, STRONG, bins=10)
    assert curve.weak_quality == 0.5
    assert curve.strong_quality == 0.9
    # Quality climbs 0.5 -> 1.0 over the first 50% of strong calls, then falls to 0.9.
    assert curve.strong_share == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert curve.quality == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9])
    # AUC by trapezoids: 0.375 (rise) + 0.4 (plateau) + 0.095 (last step) = 0.87.
    assert curve.auc == pytest.approx(0.87)
    assert curve.apgr == pytest.approx((0.87 - 0.5) / (0.9 - 0.5))
    # Half the gap (quality 0.7) needs 20% strong calls; 80% (0.82) needs 32%.
    assert curve.cpt50 == pytest.approx(0.2)
    assert curve.cpt80 == pytest.approx(0.32)


def test_inverted_router_is_worse_than_random() -> None:
    scores = -np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.3, 0.25, 0.2, 0.15, 0.1])
    assert evaluate_router(scores, WEAK, STRONG).apgr < 0.5


def test_random_baseline_is_about_half() -> None:
    rng = np.random.default_rng(1)
    weak = rng.integers(0, 2, 2000)
    strong = np.maximum(weak, rng.integers(0, 2, 2000))
    baseline = random_baseline(weak, strong, seeds=10)
    assert baseline["apgr"] == pytest.approx(0.5, abs=0.03)
    assert baseline["cpt50"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_threshold_for_share_sends_that_share(share: float) -> None:
    scores = np.random.default_rng(0).random(1000)
    threshold = threshold_for_share(scores, share)
    assert np.mean(scores >= threshold) == pytest.approx(share, abs=0.002)


def test_threshold_for_share_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_share(np.array([0.1]), 1.5)
