"""Local-first cascade: which confidence signal tells the edge's right answers from its wrong ones?

The cascade (``router/policies/cascade.py``) answers on the edge and escalates
to the cloud when the edge answer's confidence is below a threshold. This
measures candidate confidence signals on the labelled router data
(``../shared/data``, with the edge labels of ``edge_models.labeling``):

* MMLU (the edge answers with one letter, scored by its log-probability
  after RouteLLM's ``Answer:`` prompt): the letter's log-probability over
  the whole vocabulary (the "mean token logprob" of a one-token answer), the
  largest of the four renormalised letter probabilities, the margin to the
  runner-up;
* GSM8K (a greedy answer of at most 256 tokens through the chat template,
  as served, but greedy like the labels): the mean, minimum and tail-mean
  token log-probability of the generated answer, and its length;
* a verifier: a logistic head on those cheap features, scored by 5-fold
  cross-validation so it never sees the rows it is scored on.

For each it prints the AUC (P(a right answer scores above a wrong one)) with
a bootstrap 95% interval and the cascade's APGR (the area under its curve
as a share of the all-edge to all-cloud gap; random escalation scores 0.5),
then the cascade curve: escalating the least confident x% to the cloud
(whose correctness is GPT-4's, ``gpt4_correct``), the accuracy of the
combined answers, the served signal's threshold for that share, and the
edge tokens the escalations wasted. GSM8K rows are all the edge's right
answers plus a random sample of its wrong ones, weighted back to the full
file's mix for the curve (AUC does not depend on the mix).

The per-row signals are cached in ``router/training/labels/cascade_signals.jsonl``;
``--regenerate`` runs the edge model again (MMLU 4 and GSM8K 36 minutes for the
defaults on the shared 2-core machine); ``--cost`` only measures what collecting
log-probabilities costs in decode speed.

    python bench/cascade.py [--regenerate [--mmlu-rows 1000] [--gsm8k-rows 300]] [--plot docs/cascade_curve.png]
    python bench/cascade.py --cost
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_models.labeling import LETTERS, extract_number, read_jsonl, row_id  # noqa: E402
from edge_models.runtime import EdgeModel, SamplingOptions  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LABELS = ROOT / "router" / "training" / "labels" / "edge_labels.jsonl"
CACHE = ROOT / "router" / "training" / "labels" / "cascade_signals.jsonl"
TAIL = 8  # tokens at the end of an answer: where a GSM8K answer states its number


# --- regenerating the per-row signals -------------------------------------------------------------


def load_sources() -> dict[str, list[dict[str, Any]]]:
    """Data rows of each source, joined with their edge label (rows without one are dropped)."""
    labels = {row["id"]: row for row in read_jsonl(LABELS)}
    out: dict[str, list[dict[str, Any]]] = {}
    for source in ("mmlu", "gsm8k"):
        rows = read_jsonl(DATA / f"{source}_routellm.train.jsonl")
        out[source] = [{**row, **labels[key]} for row in rows if (key := row_id(row)) in labels]
    return out


def sample(rows: list[dict[str, Any]], size: int, *, all_right: bool, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded random sample; with ``all_right``, every row the edge got right plus random wrong ones."""
    rng = random.Random(seed)
    if not all_right:
        return rng.sample(rows, min(size, len(rows)))
    right = [row for row in rows if row["edge_correct"]]
    wrong = [row for row in rows if not row["edge_correct"]]
    return right + rng.sample(wrong, max(0, min(size - len(right), len(wrong))))


def mmlu_signals(model: EdgeModel, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    letter_ids = [int(model.encode(f" {letter}")[-1]) for letter in LETTERS]
    for row in rows:
        logprobs = model.next_token_logprobs(model.encode(row["prompt"]), letter_ids)
        chosen = LETTERS.index(row["edge_answer"])
        probs = sorted(row["edge_letter_probs"], reverse=True)
        yield {
            "answer_logprob": round(logprobs[chosen], 4),
            "letter_mass": round(float(np.exp(logprobs).sum()), 4),
            "letter_max": probs[0],
            "letter_margin": round(probs[0] - probs[1], 4),
        }


def gsm8k_signals(model: EdgeModel, rows: list[dict[str, Any]], raw: Path | None) -> Iterator[dict[str, Any]]:
    for row in rows:
        ids = model.encode_chat([{"role": "user", "content": row["question"]}])
        generation = model.generate(ids, SamplingOptions(max_new_tokens=256), logprobs=True)
        text = "".join(generation)
        lps = generation.token_logprobs or []
        number = extract_number(text)
        if raw is not None:
            with raw.open("a") as out:
                out.write(json.dumps({"id": row_id(row), "text": text, "logprobs": [round(x, 3) for x in lps]}) + "\n")
        yield {
            "mean_logprob": round(statistics.fmean(lps), 4),
            "min_logprob": round(min(lps), 4),
            "tail_logprob": round(statistics.fmean(lps[-TAIL:]), 4),
            "tokens": generation.completion_tokens,
            "truncated": generation.finish_reason == "length",
            "has_number": number is not None,
            # The same greedy answer as the label's, unless the numerics moved (threads, build).
            "regenerated_correct": number is not None and abs(number - float(row["answer_number"])) < 1e-6,
            "edge_seconds": round(generation.elapsed_s, 3),
        }


def regenerate(args: argparse.Namespace) -> None:
    from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION, model_dir

    model = EdgeModel.load(args.model or model_dir(DEFAULT_MODEL, DEFAULT_PRECISION), threads=args.threads)
    sources = load_sources()
    partial = args.signals.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    mmlu = sample(sources["mmlu"], args.mmlu_rows, all_right=False)
    gsm8k = sample(sources["gsm8k"], args.gsm8k_rows, all_right=True)
    # Generators: each source's rows run only when its turn comes.
    jobs = (("mmlu", mmlu, mmlu_signals(model, mmlu)), ("gsm8k", gsm8k, gsm8k_signals(model, gsm8k, args.raw)))
    with partial.open("w") as out:
        for source, rows, signals in jobs:
            started = time.perf_counter()
            for index, (row, found) in enumerate(zip(rows, signals, strict=True), start=1):
                record = {"id": row_id(row), "source": source, "edge_correct": row["edge_correct"],
                          "gpt4_correct": bool(row["gpt4_correct"]), **found}  # fmt: skip
                out.write(json.dumps(record) + "\n")
                if index % 50 == 0 or index == len(rows):
                    out.flush()
                    rate = index / (time.perf_counter() - started)
                    print(f"{source}: {index}/{len(rows)} rows, {rate:.2f} rows/s", file=sys.stderr, flush=True)
    partial.replace(args.signals)


# --- what collecting log-probabilities costs -------------------------------------------------------


def decode_cost(args: argparse.Namespace, rounds: int = 10, tokens: int = 128) -> None:
    """Decode tokens/s with and without log-probabilities, interleaved so drift hits both alike."""
    from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION, model_dir

    model = EdgeModel.load(args.model or model_dir(DEFAULT_MODEL, DEFAULT_PRECISION), threads=args.threads)
    questions = [row["question"] for row in read_jsonl(DATA / "gsm8k_routellm.train.jsonl")[:4]]
    prompts = [model.encode_chat([{"role": "user", "content": q}]) for q in questions]
    rates: dict[bool, list[float]] = {False: [], True: []}
    for index in range(rounds * 2):
        wanted = bool(index % 2) ^ bool(index // 2 % 2)  # ABBA order
        for ids in prompts:
            generation = model.generate(ids, SamplingOptions(max_new_tokens=tokens), logprobs=wanted)
            "".join(generation)
            if generation.completion_tokens > 1 and generation.first_token_s is not None:
                decode_s = generation.elapsed_s - generation.first_token_s
                rates[wanted].append((generation.completion_tokens - 1) / decode_s)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"decode rate, {len(rates[False])} generations each, {model.threads} threads: "
          f"without logprobs {off:.1f} tok/s, with {on:.1f} tok/s ({(on - off) / off:+.1%})")  # fmt: skip


# --- measuring the signals ------------------------------------------------------------------------

# Candidate signals per source: (name, column, sign). Higher confidence = more likely right; the
# sign flips columns where a larger value means less sure.
CANDIDATES: dict[str, list[tuple[str, str, float]]] = {
    "mmlu": [
        ("answer letter logprob (= mean token logprob)", "answer_logprob", 1.0),
        ("letter-prob max (A-D renormalised)", "letter_max", 1.0),
        ("letter-prob margin (top1 - top2)", "letter_margin", 1.0),
    ],
    "gsm8k": [
        ("mean token logprob", "mean_logprob", 1.0),
        ("min token logprob", "min_logprob", 1.0),
        (f"tail mean logprob (last {TAIL} tokens)", "tail_logprob", 1.0),
        ("answer length (shorter = surer)", "tokens", -1.0),
    ],
}
VERIFIER_FEATURES = {
    "mmlu": ["answer_logprob", "letter_max", "letter_margin", "letter_mass"],
    "gsm8k": ["mean_logprob", "min_logprob", "tail_logprob", "tokens", "truncated", "has_number"],
}
# The signal the served cascade uses (router/backends/cascade.py): the curve's threshold column.
SERVED = {"mmlu": "answer_logprob", "gsm8k": "mean_logprob"}


def auc_with_interval(scores: Any, right: Any, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """ROC AUC of ``scores`` for ``right``, with a bootstrap 95% interval."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    point = float(roc_auc_score(right, scores))
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(right), len(right))
        if right[pick].min() != right[pick].max():
            draws.append(roc_auc_score(right[pick], scores[pick]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def verifier_scores(features: Any, right: Any, *, folds: int = 5, seed: int = 0) -> Any:
    """Out-of-fold P(right) from a logistic head: each row is scored by a head that never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(head, features, right, cv=split, method="predict_proba")[:, 1]


def feature_matrix(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    return np.array([[float(row[c]) if c != "tokens" else np.log(row[c]) for c in columns] for row in rows])


def signals_of(source: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each candidate's confidence per row (higher = surer), the verifier's included."""
    right = np.array([row["edge_correct"] for row in rows], dtype=int)
    out = {name: sign * np.array([float(row[column]) for row in rows]) for name, column, sign in CANDIDATES[source]}
    # Cross-validation needs a few rows of each kind in every fold.
    if min(right.sum(), len(right) - right.sum()) >= 5:
        features = feature_matrix(rows, VERIFIER_FEATURES[source])
        out["verifier: logistic head on the above (5-fold CV)"] = verifier_scores(features, right)
    return out


def weights_of(source: str, rows: list[dict[str, Any]], population: list[dict[str, Any]]) -> Any:
    """Per-row weights that give the sample the population's right/wrong mix."""
    right = np.array([bool(row["edge_correct"]) for row in rows])
    if source == "mmlu":
        return np.ones(len(rows))
    share = np.mean([bool(row["edge_correct"]) for row in population])
    return np.where(right, share / right.mean(), (1 - share) / (1 - right.mean()))


def escalated(confidence: Any, weights: Any, share: float) -> Any:
    """Mask of the least confident rows that together hold ``share`` of the (weighted) requests."""
    order = np.argsort(confidence, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    mask = np.zeros(len(order), dtype=bool)
    mask[order[: int(np.searchsorted(cumulative, share - 1e-9, side="left")) + (share > 0)]] = True
    return mask


def curve(confidence: Any, source: Sample, shares: Any) -> Any:
    """Accuracy of the combined answers when the least confident of each share escalate to the cloud."""
    return np.array([
        np.average(np.where(escalated(confidence, source.weights, share), source.cloud, source.right), weights=source.weights)
        for share in shares
    ])  # fmt: skip


def apgr(shares: Any, accuracy: Any) -> float:
    """Area under the curve as a share of the gap between all-edge and all-cloud (random escalation: 0.5)."""
    weak, strong = accuracy[0], accuracy[-1]
    return float((np.trapezoid(accuracy, shares) - weak) / (strong - weak))


@dataclass
class Sample:
    """One source's cached rows as arrays: edge and cloud correctness, weights, the signals."""

    name: str
    rows: list[dict[str, Any]]
    right: Any
    cloud: Any
    weights: Any
    signals: dict[str, Any]

    @classmethod
    def of(cls, name: str, rows: list[dict[str, Any]], population: list[dict[str, Any]]) -> Sample:
        right = np.array([row["edge_correct"] for row in rows], dtype=int)
        cloud = np.array([row["gpt4_correct"] for row in rows], dtype=int)
        return cls(name, rows, right, cloud, weights_of(name, rows, population), signals_of(name, rows))

    def column(self, key: str) -> Any:
        return np.array([float(row[key]) for row in self.rows])


FINE = np.linspace(0, 1, 101)


def auc_table(sample: Sample) -> dict[str, Any]:
    """Print each signal's AUC and cascade APGR; return each one's curve, with random and oracle."""
    right = sample.right
    print(f"\n## {sample.name.upper()}: {len(right)} rows ({right.sum()} right, {len(right) - right.sum()} wrong)")
    print("\n| confidence signal | AUC (95% CI) | cascade APGR |\n|---|---|---|")
    curves = {}
    for name, scores in sample.signals.items():
        point, low, high = auc_with_interval(scores, right)
        curves[name] = curve(scores, sample, FINE)
        print(f"| {name} | {point:.3f} ({low:.3f}-{high:.3f}) | {apgr(FINE, curves[name]):.3f} |")
    first = next(iter(curves.values()))
    curves["random"] = first[0] + FINE * (first[-1] - first[0])
    # The oracle escalates exactly the rows the cloud gets right and the edge does not.
    curves["oracle"] = curve(0.5 * right - ((right == 0) & (sample.cloud == 1)), sample, FINE)
    return curves


def curve_table(sample: Sample, curves: dict[str, Any]) -> None:
    """Escalation share 0..100% against accuracy, with the served signal's threshold and the edge's waste."""
    served = sample.column(SERVED[sample.name])
    tokens = sample.column("tokens") if "tokens" in sample.rows[0] else None
    head = ["escalated", f"threshold ({SERVED[sample.name]})", *(n.split(" (")[0] for n in curves)]
    head += ["edge tokens wasted / request"] if tokens is not None else []
    print(f"\n{sample.name.upper()} cascade curve (accuracy of the combined answers; cloud = GPT-4):\n")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for percent in range(0, 101, 10):
        mask = escalated(served, sample.weights, percent / 100)
        cut = "-" if not mask.any() else "all" if mask.all() else f"< {served[~mask].min():.3f}"
        cells = [f"{percent}%", cut, *(f"{accuracy[percent]:.1%}" for accuracy in curves.values())]
        if tokens is not None:
            cells.append(f"{np.average(np.where(mask, tokens, 0), weights=sample.weights):.0f}")
        print("| " + " | ".join(cells) + " |")


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
    for ax, (source, curves) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, accuracy in curves.items():
            style = {"oracle": ":", "random": "--"}.get(name, "-")
            ax.plot(FINE * 100, accuracy * 100, linestyle=style, label=name.split(" (")[0])
        ax.set_title(f"{source.upper()}: edge first, the least confident escalate to GPT-4", fontsize=10)
        ax.set_xlabel("escalated to the cloud, % of requests")
        ax.set_ylabel("accuracy of the combined answers, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.savefig(path, bbox_inches="tight", dpi=110)
    print(f"\nwrote {path}")


def analyse(args: argparse.Namespace) -> None:
    cached = read_jsonl(args.signals)
    sources = load_sources()
    results = {}
    for name in ("mmlu", "gsm8k"):
        sample = Sample.of(name, [row for row in cached if row["source"] == name], sources[name])
        if name == "gsm8k":
            agree = sum(row["regenerated_correct"] == row["edge_correct"] for row in sample.rows)
            print(f"\nGSM8K: the regenerated greedy answers agree with the labels on {agree}/{len(sample.rows)} rows")
        results[name] = auc_table(sample)
        curve_table(sample, results[name])
    everything = sources["mmlu"]
    right = np.array([row["edge_correct"] for row in everything], dtype=int)
    point, low, high = auc_with_interval(np.array([max(row["edge_letter_probs"]) for row in everything]), right)
    print(f"\nMMLU letter-prob max over all {len(everything)} labelled rows: AUC {point:.3f} ({low:.3f}-{high:.3f})")
    plot(results, args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regenerate", action="store_true", help=f"run the edge model again and rewrite {CACHE.name}")
    parser.add_argument("--mmlu-rows", type=int, default=1000)
    parser.add_argument("--gsm8k-rows", type=int, default=300)
    parser.add_argument("--raw", type=Path, help="with --regenerate: also append each GSM8K answer's logprobs here")
    parser.add_argument("--cost", action="store_true", help="only measure the decode-rate cost of logprobs")
    parser.add_argument("--model", type=Path, help="built edge model folder (default: the built default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--signals", type=Path, default=CACHE, help="the per-row signals: read, or written by --regenerate"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "cascade_curve.png")
    args = parser.parse_args(argv)
    if args.cost:
        decode_cost(args)
        return 0
    if args.regenerate:
        regenerate(args)
    analyse(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
