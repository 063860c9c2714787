"""The personal-data detector on a fixed labelled set, tricky cases included."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from router.classify.checksums import cn_resident_id_valid, es_dni_valid, iban_valid, luhn_valid, verhoeff_valid
from router.classify.personal_data import PatternDetector, Span

CASES = [
    json.loads(line) for line in (Path(__file__).parents[1] / "data" / "personal_data.jsonl").read_text().splitlines()
]


def matches(found: Span, expected: dict[str, object]) -> bool:
    return found.kind == expected["kind"] and found.start < expected["end"] and expected["start"] < found.end  # type: ignore[operator]


def test_precision_and_recall_on_the_labelled_set() -> None:
    detector = PatternDetector()
    tp = fp = fn = 0
    per_kind: Counter[str] = Counter()
    for case in CASES:
        found = detector.detect(case["text"])
        tp += sum(any(matches(f, e) for e in case["spans"]) for f in found)
        fp += sum(not any(matches(f, e) for e in case["spans"]) for f in found)
        misses = [e for e in case["spans"] if not any(matches(f, e) for f in found)]
        fn += len(misses)
        per_kind.update(str(e["kind"]) for e in misses)
    assert tp / (tp + fp) >= 0.95, f"precision {tp / (tp + fp):.2f}"
    assert tp / (tp + fn) >= 0.95, f"recall {tp / (tp + fn):.2f}; missed {dict(per_kind)}"


@pytest.mark.parametrize("case", [c for c in CASES if not c["spans"]], ids=lambda c: c["text"][:40])
def test_numbers_that_are_not_personal_data(case: dict[str, object]) -> None:
    assert PatternDetector().detect(str(case["text"])) == []


def test_personal_data_in_cjk_text() -> None:
    spans = PatternDetector().detect("我的邮箱是zhang.wei@example.cn，电话13812345678。")
    assert [s.kind for s in spans] == ["email", "phone"]


def test_personal_data_after_600_tokens_is_found() -> None:
    text = "The committee reviewed the plan for the next quarter. " * 300 + "Mail me at late@example.org."
    assert len(text) // 4 > 3000  # far past any model window
    spans = PatternDetector().detect(text)
    assert [(s.kind, text[s.start : s.end]) for s in spans] == [("email", "late@example.org")]


def test_personal_data_inside_base64_and_urls() -> None:
    import base64

    blob = base64.b64encode(b"my card 4111 1111 1111 1111").decode()
    spans = PatternDetector().detect(f"data={blob} and https://x.test/?to=jo%40example.com")
    assert [(s.kind, s.via) for s in spans] == [("payment_card", "base64"), ("email", "url")]
    assert all(0 < s.confidence < 1 for s in spans)


def test_spans_never_carry_the_value() -> None:
    span = PatternDetector().detect("jo@example.com")[0]
    assert "jo@example.com" not in json.dumps(span.to_dict())


def test_overlapping_spans_keep_the_most_confident() -> None:
    spans = PatternDetector().detect("card 4111111111111111")
    assert [s.kind for s in spans] == ["payment_card"]


def test_long_prose_scans_fast() -> None:
    detector = PatternDetector()
    text = "The quarterly report covers revenue, costs, and hiring plans for next year. " * 30  # ~500 tokens
    detector.detect(text)
    started = time.perf_counter()
    for _ in range(20):
        detector.detect(text)
    assert (
        time.perf_counter() - started
    ) / 20 < 0.02  # generous: ~0.5 ms measured; guards against backtracking blow-ups


@pytest.mark.parametrize(
    ("check", "valid", "invalid"),
    [
        (luhn_valid, "4012888888881881", "4012888888881882"),
        (iban_valid, "DE89370400440532013000", "DE89370400440532013001"),
        (verhoeff_valid, "234123412346", "234123412347"),
        (cn_resident_id_valid, "11010519491231002X", "110105194912310021"),
        (es_dni_valid, "12345678Z", "12345678A"),
    ],
)
def test_checksums(check, valid: str, invalid: str) -> None:  # type: ignore[no-untyped-def]
    assert check(valid)
    assert not check(invalid)
