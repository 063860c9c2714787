"""The personal-data detector on labelled sets, the issue's examples and tricky cases.

``personal_data.jsonl`` is the original set; ``personal_data_cases.jsonl``
covers every category of issue 9 (names and addresses without cue words,
cards with dots, digits of other scripts, the missed secret formats) and
ordinary questions that must stay allowed to the cloud. Each labelled span
carries its ``value``, so a wrong offset in the data fails loudly.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.classify.checksums import cn_resident_id_valid, es_dni_valid, iban_valid, luhn_valid, verhoeff_valid
from router.classify.detectors import gazetteer as gazetteer_module
from router.classify.personal_data import FixedDetector, PatternDetector, PersonalDataDetector
from router.features import Span

DATA = Path(__file__).parents[1] / "data"
CASES = [json.loads(line) for line in (DATA / "personal_data.jsonl").read_text().splitlines()]
LABELLED = [json.loads(line) for line in (DATA / "personal_data_cases.jsonl").read_text().splitlines()]
DIRECT = ("email", "phone", "payment_card", "iban", "ssn", "national_id", "ip_address", "secret")
DETECTOR = PatternDetector()


def matches(found: Span, expected: dict[str, object]) -> bool:
    return found.kind == expected["kind"] and found.start < expected["end"] and expected["start"] < found.end  # type: ignore[operator]


def found_values(text: str) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in DETECTOR.detect(text)]


def test_precision_and_recall_on_the_labelled_set() -> None:
    tp = fp = fn = 0
    per_kind: Counter[str] = Counter()
    for case in CASES:
        found = DETECTOR.detect(case["text"])
        tp += sum(any(matches(f, e) for e in case["spans"]) for f in found)
        fp += sum(not any(matches(f, e) for e in case["spans"]) for f in found)
        misses = [e for e in case["spans"] if not any(matches(f, e) for f in found)]
        fn += len(misses)
        per_kind.update(str(e["kind"]) for e in misses)
    assert tp / (tp + fp) >= 0.95, f"precision {tp / (tp + fp):.2f}"
    assert tp / (tp + fn) >= 0.95, f"recall {tp / (tp + fn):.2f}; missed {dict(per_kind)}"


def test_the_labelled_values_are_where_the_data_says() -> None:
    for case in LABELLED:
        for span in case["spans"]:
            assert case["text"][span["start"] : span["end"]] == span["value"], case["text"]


def test_recall_per_kind_meets_the_issue_targets() -> None:
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    missed = []
    for case in LABELLED:
        found = DETECTOR.detect(case["text"])
        for span in case["spans"]:
            totals[span["kind"]] += 1
            if any(matches(f, span) for f in found):
                hits[span["kind"]] += 1
            else:
                missed.append((span["kind"], span["value"]))
    for kind, total in totals.items():
        target = 0.98 if kind in DIRECT else 0.9
        assert hits[kind] / total >= target, f"{kind}: {hits[kind]}/{total}; missed {missed}"


def test_ordinary_text_is_rarely_flagged() -> None:
    negatives = [case for case in LABELLED if not case["spans"]]
    flagged = [(case["text"], found_values(case["text"])) for case in negatives if DETECTOR.detect(case["text"])]
    assert len(negatives) >= 150
    assert len(flagged) / len(negatives) <= 0.05, flagged


def test_direct_identifiers_are_covered_exactly() -> None:
    # Redaction replaces exactly the span: a span one character short leaks that character.
    for case in LABELLED:
        found = DETECTOR.detect(case["text"])
        for span in case["spans"]:
            if span["kind"] in DIRECT:
                assert any((f.start, f.end) == (span["start"], span["end"]) for f in found if f.kind == span["kind"]), (
                    span["value"],
                    found_values(case["text"]),
                )


def test_names_and_addresses_are_covered_almost_whole() -> None:
    covered = total = 0
    for case in LABELLED:
        found = DETECTOR.detect(case["text"])
        for span in case["spans"]:
            if span["kind"] in ("person_name", "street_address"):
                chars = set(range(span["start"], span["end"]))
                total += len(chars)
                covered += len(chars & {i for f in found if f.kind == span["kind"] for i in range(f.start, f.end)})
    assert covered / total >= 0.95


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thanks to Oluwaseun Adeyemi for the report.", [("person_name", "Oluwaseun Adeyemi")]),
        ("Signed: Tomasz Wierzbicki", [("person_name", "Tomasz Wierzbicki")]),
        ("Send it to 14 Rue des Lilas, 69003 Lyon", [("street_address", "14 Rue des Lilas, 69003 Lyon")]),
        ("Use 4111.1111.1111.1111 for the test", [("payment_card", "4111.1111.1111.1111")]),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         [("secret", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]),
        ("Authorization: Bearer 8f3b2c1d9e7a6b5c4d3e2f1a0b9c8d7e", [("secret", "8f3b2c1d9e7a6b5c4d3e2f1a0b9c8d7e")]),
        ("token glpat-xK9mN2pQ7rS4tV6wY8zA", [("secret", "glpat-xK9mN2pQ7rS4tV6wY8zA")]),
        ("HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", [("secret", "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh")]),
        ("//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
         [("secret", "npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8")]),
        ("key 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",
         [("secret", "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")]),
        ("AccountName=a;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
         [("secret", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")]),
        ("password: hunter2", [("secret", "hunter2")]),
        ("my pwd is abc123", [("secret", "abc123")]),
    ],
)  # fmt: skip
def test_the_examples_of_the_issue(text: str, expected: list[tuple[str, str]]) -> None:
    assert found_values(text) == expected


@pytest.mark.parametrize("zero", [0x660, 0x6F0, 0x966, 0x9E6, 0xFF10, 0xE50, 0x1D7CE], ids=hex)
def test_digits_of_any_script_keep_their_offsets(zero: int) -> None:
    card = "".join(chr(zero + int(ch)) if ch.isdigit() else ch for ch in "4111 1111 1111 1111")
    text = f"card: {card} thanks"
    assert found_values(text) == [("payment_card", card)]


def test_a_cue_in_one_field_finds_the_value_in_the_next() -> None:
    # The classifier joins every outgoing string with newlines and detects once over the whole.
    surface = "\n".join(["You are a helpful assistant.", "My SSN is", "536221984", "thanks"])
    assert found_values(surface) == [("ssn", "536221984")]


def test_ordinary_questions_stay_allowed() -> None:
    for text in (
        "Who was Abraham Lincoln?",
        "Explain the Paris Agreement",
        "What did Marie Curie discover?",
        "def add(a, b):\n    return a + b",
        "Integrate sin(x) * cos(x) from 0 to pi/2.",
        "How do I use Visual Studio Code with Python?",
        "password = os.environ['DB_PASSWORD']",
        "How do I connect to my router at 192.168.1.1?",
    ):
        assert DETECTOR.detect(text) == [], text


def test_a_public_landmark_address_is_still_an_address() -> None:
    # A documented choice: the detector cannot tell a landmark from a home, and keeping it local costs little.
    assert found_values("Who lives at 10 Downing Street?") == [("street_address", "10 Downing Street")]


def test_personal_data_in_cjk_text() -> None:
    spans = DETECTOR.detect("我的邮箱是zhang.wei@example.cn，电话13812345678。")
    assert [s.kind for s in spans] == ["email", "phone"]


def test_personal_data_after_600_tokens_is_found() -> None:
    text = "The committee reviewed the plan for the next quarter. " * 300 + "Mail me at late@example.org."
    assert len(text) // 4 > 3000  # far past any model window
    assert found_values(text) == [("email", "late@example.org")]


def test_personal_data_inside_base64_and_urls() -> None:
    import base64

    blob = base64.b64encode(b"my card 4111 1111 1111 1111").decode()
    spans = DETECTOR.detect(f"data={blob} and https://x.test/?to=jo%40example.com")
    assert [(s.kind, s.via) for s in spans] == [("payment_card", "base64"), ("email", "url")]
    assert all(0 < s.confidence < 1 for s in spans)


def test_a_card_after_an_identifier_with_digits_is_found() -> None:
    # "file-1" glues a digit to the run; the card starts at its second group.
    assert found_values("file-1 4111 1111 1111 1111 end") == [("payment_card", "4111 1111 1111 1111")]


def test_values_in_a_url_query_with_plus_for_spaces_are_found() -> None:
    text = "https://img.example/a.png?q=4111+1111+1111+1111&size=2"
    assert [(s.kind, s.via) for s in DETECTOR.detect(text)] == [("payment_card", "url")]


def test_spans_never_carry_the_value() -> None:
    span = DETECTOR.detect("jo@example.com")[0]
    assert "jo@example.com" not in json.dumps(span.to_dict())


def test_overlapping_spans_keep_the_most_confident() -> None:
    assert [s.kind for s in DETECTOR.detect("card 4111111111111111")] == ["payment_card"]


def test_overlapping_spans_of_one_kind_merge_so_nothing_is_left_out() -> None:
    # The street finder stops at "Bristol BS"; the postcode finder sees "BS8 1TH": one span covers both.
    text = "Deliver to Flat 3, 27 Queensway, Bristol BS8 1TH"
    assert found_values(text) == [("street_address", "Flat 3, 27 Queensway, Bristol BS8 1TH")]


def test_long_prose_scans_fast() -> None:
    text = "The quarterly report covers revenue, costs, and hiring plans for next year. " * 30  # ~500 tokens
    DETECTOR.detect(text)
    started = time.perf_counter()
    for _ in range(20):
        DETECTOR.detect(text)
    # Generous: ~0.3 ms measured; guards against a finder that turned slow.
    assert (time.perf_counter() - started) / 20 < 0.02


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_any_text_is_scanned_without_error_and_spans_are_ordered(text: str) -> None:
    spans = DETECTOR.detect(text)
    assert all(0 <= s.start < s.end <= len(text) for s in spans)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(["4111", " ", "-", ".", "@", "Anna", "Street", "12", "eyJ", "=", "\n", "Dr."]), max_size=80
    )
)
def test_pieces_of_personal_data_shuffled_never_raise(pieces: list[str]) -> None:
    DETECTOR.detect("".join(pieces))


def test_the_gazetteer_is_read_once_for_all_threads() -> None:
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(gazetteer_module.gazetteer())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(g is loaded[0] for g in loaded)
    assert len(loaded[0].first_names) > 10_000 and len(loaded[0].last_names) > 10_000


def test_the_built_in_and_the_fake_meet_the_contract() -> None:
    detectors: list[PersonalDataDetector] = [PatternDetector(), FixedDetector([Span("email", 0, 2)])]
    assert [d.name for d in detectors] == ["patterns", "fixed"]
    assert list(detectors[1].detect("anything")) == [Span("email", 0, 2)]
    with pytest.raises(RuntimeError):
        FixedDetector(error=RuntimeError("boom")).detect("x")


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
