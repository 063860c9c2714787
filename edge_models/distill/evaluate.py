"""Scoring a student before it serves: holdout accuracy, token loss, the promotion test and the gate.

``distill eval`` (:func:`eval_cli`) runs three measurements and two decisions:

* :func:`evaluate`: every row's prompt through :func:`~edge_models.distill.prefix.student_messages`
  and the model's chat template, exactly as the edge backend serves it; a greedy
  answer with its token log-probabilities (exact match against the reference,
  after :func:`normalize_answer`), and the per-token loss of the reference
  answer under teacher forcing (from the same prefill, rewound; nothing to rerun
  when the greedy answer is the reference itself);
* :func:`guards`: general ability on ``tests/data`` (the 20 questions of
  ``edge_qa.jsonl``, the perplexity of ``edge_agreement_texts.jsonl``), the
  measures of ``bench/edge_quality.py``, with no alias substitution;
* :func:`paired_test`: exact McNemar test of two models' per-row correctness on
  the same rows, and :func:`decide_promotion` on it and the guards;
* :func:`calibrate_gate`: the confidence threshold above which the student's
  answers are right at least ``target_accuracy`` of the time, on the signal
  (``mean`` or ``min`` token log-probability, computed as
  ``router.backends.cascade.confidence`` does) that keeps more answers.

Greedy decoding is the edge backend's at ``temperature: 0``; a gate calibrated
here holds for a route served greedily.

Everything here is stdlib, numpy and ONNX Runtime GenAI: no torch.

>>> paired_test([True] * 12 + [False] * 2, [False] * 10 + [True] * 4).p_value  # 10 vs 2 discordant
0.03857421875
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from edge_models.distill.manifest import ConfidenceGate, StudentManifest
from edge_models.distill.prefix import student_messages
from edge_models.distill.rows import ReadReport, Row, answer_of, prompt_messages, read_rows, row_hash, split_holdout
from edge_models.errors import EdgeModelError, GenerationError

if TYPE_CHECKING:
    from edge_models.runtime import ChatMessage, EdgeModel

__all__ = [
    "DEFAULT_GUARD_DATA",
    "DEFAULT_TOLERANCE",
    "Decision",
    "EvalReport",
    "GuardReport",
    "GuardTolerance",
    "PairedResult",
    "calibrate_gate",
    "decide_promotion",
    "eval_cli",
    "evaluate",
    "guards",
    "normalize_answer",
    "paired_test",
    "served_messages",
    "teacher_forced_logprobs",
]

Progress = Callable[[str], None]
Signal = Literal["mean", "min"]

DEFAULT_GUARD_DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
"""``edge_agreement_texts.jsonl`` and ``edge_qa.jsonl`` in a source checkout."""

_WS = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """The form exact match compares: case-folded, whitespace collapsed, no trailing period.

    >>> normalize_answer("  Card_Arrival.\\n"), normalize_answer("Paris  is\\tnice")
    ('card_arrival', 'paris is nice')
    """
    return _WS.sub(" ", text.casefold()).strip().rstrip(".").rstrip()


def _confidence(token_logprobs: Sequence[float] | None, signal: Signal) -> float:
    # The same arithmetic as router.backends.cascade.confidence, which the gateway's cascade
    # applies (edge_models may not import router; tests/distill/test_evaluate.py checks they agree).
    if not token_logprobs:
        return -math.inf
    return statistics.fmean(token_logprobs) if signal == "mean" else min(token_logprobs)


def _finite(value: float, digits: int = 6) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


# --- Scoring a model on rows -------------------------------------------------------------------


@dataclass(frozen=True)
class EvalReport:
    """How a model did on rows, overall and per row (rows in the order given, skipped ones left out).

    ``token_loss`` is the mean negative log-likelihood (nats) of the reference
    answers' tokens, end-of-turn token included, weighted by tokens.
    ``confidence_mean`` / ``confidence_min`` score the model's own greedy answer
    as the gateway's cascade does. ``skipped`` counts rows whose prompt and
    reference do not fit the model's window (the edge would not serve them).
    """

    model: str
    version: str
    n: int
    exact_match: float
    token_loss: float
    seconds: float
    row_ids: tuple[str, ...] = ()
    correct: tuple[bool, ...] = ()
    confidence_mean: tuple[float, ...] = ()
    confidence_min: tuple[float, ...] = ()
    loss: tuple[float, ...] = ()
    reference_tokens: tuple[int, ...] = ()
    prompt_tokens: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()
    skipped: int = 0
    # Rows whose reference needed its own teacher-forced pass (not the greedy answer itself).
    forced: int = 0
    # Seconds: load, greedy generation, teacher forcing.
    timing: Mapping[str, float] = field(default_factory=dict)

    def gate(
        self, target_accuracy: float = 0.97, *, min_accepted: int = 20, objective: str = "route"
    ) -> ConfidenceGate:
        """The confidence gate calibrated on these rows."""
        return calibrate_gate(
            self.confidence_mean, self.confidence_min, self.correct,
            target_accuracy=target_accuracy, min_accepted=min_accepted, objective=objective,
        )  # fmt: skip

    def to_dict(self, *, per_row: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "rows": self.n,
            "skipped": self.skipped,
            "teacher_forced_rows": self.forced,
            "exact_match": round(self.exact_match, 6),
            "token_loss": _finite(self.token_loss),
            "seconds": round(self.seconds, 3),
            "timing": {key: round(value, 3) for key, value in self.timing.items()},
        }
        if per_row:
            out["per_row"] = [
                {"id": row_id, "correct": ok, "confidence_mean": _finite(mean), "confidence_min": _finite(low),
                 "loss": _finite(loss), "reference_tokens": tokens, "prompt_tokens": prompt, "answer": answer}
                for row_id, ok, mean, low, loss, tokens, prompt, answer in zip(
                    self.row_ids, self.correct, self.confidence_mean, self.confidence_min, self.loss,
                    self.reference_tokens, self.prompt_tokens, self.answers, strict=True,
                )
            ]  # fmt: skip
        return out


def _load(folder: Path, threads: int | None) -> EdgeModel:
    from edge_models.runtime import EdgeModel

    return EdgeModel.load(folder, threads=threads)


def _end_of_turn(model: EdgeModel) -> int:
    """The token that ends an assistant turn: the chat template's end marker when it is an eos token."""
    for marker in ("<|im_end|>", "<|end|>", "<|eot_id|>"):
        ids = model.encode(marker)
        if len(ids) == 1 and int(ids[0]) in model.eos_token_ids:
            return int(ids[0])
    return int(min(model.eos_token_ids))


def _generator(model: EdgeModel, context: Sequence[int], max_length: int) -> Any:
    import numpy as np
    import onnxruntime_genai as og

    from edge_models.runtime import SamplingOptions

    # Greedy search options, as SamplingOptions(temperature=0) gives the edge backend.
    generator = og.Generator(model.model, model.search_params(SamplingOptions(1), max_length))
    generator.append_tokens(np.asarray(context, dtype=np.int32))
    return generator


def _force(generator: Any, targets: Sequence[int]) -> list[float]:
    import numpy as np

    from edge_models.runtime import token_logprob

    out = []
    for index, token in enumerate(targets):
        out.append(token_logprob(generator.get_logits(), int(token)))
        if index + 1 < len(targets):
            generator.append_tokens(np.array([token], dtype=np.int32))
    return out


def teacher_forced_logprobs(model: EdgeModel, context: Sequence[int], targets: Sequence[int]) -> list[float]:
    """log P(targets[i] | context + targets[:i]) for each i, one decode step per target token.

    The int8 build keeps logits for the last position only (its pruned lm_head),
    so a whole sequence cannot be scored in one pass: the context is prefilled
    once, then each target token is read off the logits and appended.
    """
    if not targets:
        return []
    try:
        return _force(_generator(model, context, len(context) + len(targets)), targets)
    except Exception as exc:  # ONNX Runtime GenAI raises plain RuntimeErrors
        raise GenerationError(f"teacher forcing failed: {exc}") from exc


@dataclass
class _Greedy:
    text: str
    tokens: list[int]
    logprobs: list[float]


def _greedy(model: EdgeModel, generator: Any, budget: int) -> _Greedy:
    """Greedy decoding as :class:`edge_models.runtime.Generation` does it (no stop sequences)."""
    from edge_models.runtime import token_logprob

    stream = model.tokenizer.create_stream()
    out = _Greedy("", [], [])
    while len(out.tokens) < budget and not generator.is_done():
        logits = generator.get_logits()
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        out.tokens.append(token)
        out.logprobs.append(token_logprob(logits, token))
        if token in model.eos_token_ids:
            break
        out.text += stream.decode(token)
    return out


def _answer_and_loss(
    model: EdgeModel, ids: Sequence[int], targets: Sequence[int], max_new: int, timing: _Scores
) -> tuple[_Greedy, list[float]]:
    """The greedy answer, and the log-probabilities of ``targets`` (the reference), from one prefill.

    The prompt is prefilled once (a 600-token prompt costs seconds on two cores):
    greedy decoding runs, then the generator is rewound to the prompt and the
    reference is forced. When the greedy tokens
    are the reference's (a right answer, ended by the end-of-turn token), their
    log-probabilities already are the teacher-forced ones and nothing is rerun.
    """
    import numpy as np

    started = time.perf_counter()
    budget = min(max_new, model.context_length - len(ids))
    try:
        generator = _generator(model, ids, len(ids) + max(budget, len(targets)))
        greedy = _greedy(model, generator, budget)
        middle = time.perf_counter()
        if greedy.tokens == list(targets):
            forced = greedy.logprobs
        else:
            # Back to the prompt, its last two tokens fed again for the logits after it. Two, not
            # one: the int8 model computes one token (the decode kernels) measurably differently
            # from several (the prefill's), and the prompt's logits must be the prefill's.
            keep = max(0, len(ids) - 2)
            generator.rewind_to(keep)
            generator.append_tokens(np.asarray(ids[keep:], dtype=np.int32))
            forced = _force(generator, targets)
            timing.forced += 1
    except Exception as exc:  # ONNX Runtime GenAI raises plain RuntimeErrors
        raise GenerationError(f"evaluation failed: {exc}") from exc
    timing.generate_s += middle - started
    timing.loss_s += time.perf_counter() - middle
    return greedy, forced


def served_messages(row: Row, aliases: Mapping[str, str]) -> list[ChatMessage]:
    """The prompt of ``row`` as the edge backend hands it to the chat template.

    The student's view (a fixed system prompt replaced by its alias), then the
    backend's own mapping: ``developer`` is a system message to a chat template.
    """
    messages = student_messages(prompt_messages(row["messages"]), aliases)
    return [
        {"role": "system" if m["role"] == "developer" else str(m["role"]), "content": str(m["content"])}
        for m in messages
    ]


@dataclass
class _Scores:
    row_ids: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    skipped: int = 0
    forced: int = 0
    generate_s: float = 0.0
    loss_s: float = 0.0


def _score_row(model: EdgeModel, row: Row, aliases: Mapping[str, str], eot: int, max_new: int, into: _Scores) -> None:
    ids: list[int] = model.encode_chat(served_messages(row, aliases)).tolist()
    reference = answer_of(row["messages"]) or ""
    targets = [*(int(t) for t in model.encode(reference)), eot]
    if len(ids) + len(targets) > model.context_length:
        into.skipped += 1
        return
    greedy, forced = _answer_and_loss(model, ids, targets, max_new, into)
    answer = greedy.text.strip()
    into.row_ids.append(row_hash(row["messages"]))
    into.correct.append(normalize_answer(answer) == normalize_answer(reference))
    into.mean.append(_confidence(greedy.logprobs, "mean"))
    into.low.append(_confidence(greedy.logprobs, "min"))
    into.loss.append(-statistics.fmean(forced))
    into.tokens.append(len(targets))
    into.prompt.append(len(ids))
    into.answers.append(answer)


def evaluate(
    folder: Path,
    rows: Sequence[Row],
    *,
    max_new_tokens: int = 32,
    threads: int | None = None,
    progress: Progress | None = None,
    model: EdgeModel | None = None,
) -> EvalReport:
    """Score the model in ``folder`` on ``rows`` as the gateway would serve them (greedy).

    ``model`` is the already loaded model of ``folder`` (tests share one);
    the prompt aliases always come from ``folder``'s manifest.
    """
    started = time.perf_counter()
    manifest = StudentManifest.find(folder)
    aliases = manifest.prompt_aliases if manifest else {}
    engine = model or _load(folder, threads)
    loaded = time.perf_counter()
    eot = _end_of_turn(engine)
    scores = _Scores()
    for done, row in enumerate(rows, 1):
        _score_row(engine, row, aliases, eot, max_new_tokens, scores)
        if progress and (done % 50 == 0 or done == len(rows)):
            right = sum(scores.correct)
            progress(f"{folder.name}: {done}/{len(rows)} rows, exact match {right}/{len(scores.correct)}")
    weight = sum(scores.tokens)
    token_loss = sum(loss * n for loss, n in zip(scores.loss, scores.tokens, strict=True)) / weight if weight else 0.0
    return EvalReport(
        model=str(folder),
        version=manifest.version if manifest else "base",
        n=len(scores.correct),
        exact_match=sum(scores.correct) / len(scores.correct) if scores.correct else 0.0,
        token_loss=token_loss,
        seconds=time.perf_counter() - started,
        row_ids=tuple(scores.row_ids),
        correct=tuple(scores.correct),
        confidence_mean=tuple(scores.mean),
        confidence_min=tuple(scores.low),
        loss=tuple(scores.loss),
        reference_tokens=tuple(scores.tokens),
        prompt_tokens=tuple(scores.prompt),
        answers=tuple(scores.answers),
        skipped=scores.skipped,
        forced=scores.forced,
        timing={"load": loaded - started, "generate": scores.generate_s, "loss": scores.loss_s},
    )


# --- General-ability guards --------------------------------------------------------------------


@dataclass(frozen=True)
class GuardReport:
    """General ability, measured as ``bench/edge_quality.py`` does.

    ``qa_right`` of ``qa_total`` questions of ``edge_qa.jsonl`` whose greedy
    answer (32 tokens) contains an expected answer as a word; ``text_loss`` the
    mean negative log-likelihood per token of ``edge_agreement_texts.jsonl``
    (``perplexity`` is its exponential). The built int8 base model: 13 of 20,
    perplexity 9.13.
    """

    qa_right: int
    qa_total: int
    text_loss: float
    text_tokens: int
    seconds: float
    qa_answers: tuple[str, ...] = ()

    @property
    def perplexity(self) -> float:
        return math.exp(self.text_loss)

    def to_dict(self) -> dict[str, Any]:
        return {
            "qa_right": self.qa_right,
            "qa_total": self.qa_total,
            "text_loss": round(self.text_loss, 6),
            "perplexity": round(self.perplexity, 4),
            "text_tokens": self.text_tokens,
            "seconds": round(self.seconds, 3),
        }


def _guard_files(data: Path | None) -> tuple[Path, Path]:
    root = data or DEFAULT_GUARD_DATA
    texts, qa = root / "edge_agreement_texts.jsonl", root / "edge_qa.jsonl"
    for path in (texts, qa):
        if not path.is_file():
            raise EdgeModelError(f"guard data {path} is missing: run from a source checkout or pass its folder")
    return texts, qa


def _qa_right(reply: str, answers: Iterable[str]) -> bool:
    return any(re.search(rf"\b{re.escape(answer)}\b", reply.lower()) for answer in answers)


def guards(
    folder: Path,
    *,
    data: Path | None = None,
    threads: int | None = None,
    model: EdgeModel | None = None,
) -> GuardReport:
    """General chat and language modelling on the guard data (default :data:`DEFAULT_GUARD_DATA`).

    No alias substitution: these are plain chats, served to any model alike.
    """
    from edge_models.labeling import read_jsonl
    from edge_models.runtime import SamplingOptions

    texts_file, qa_file = _guard_files(data)
    started = time.perf_counter()
    engine = model or _load(folder, threads)
    nll: list[float] = []
    for item in read_jsonl(texts_file):
        # Token 0 (<|endoftext|>) first, so the first token of the text is predicted too.
        nll.extend(-lp for lp in teacher_forced_logprobs(engine, [0], [int(t) for t in engine.encode(item["text"])]))
    replies, right = [], 0
    questions = read_jsonl(qa_file)
    for item in questions:
        ids = engine.encode_chat([{"role": "user", "content": item["question"]}])
        reply = "".join(engine.generate(ids, SamplingOptions(32)))
        replies.append(reply)
        right += _qa_right(reply, item["answers"])
    return GuardReport(
        qa_right=right,
        qa_total=len(questions),
        text_loss=statistics.fmean(nll) if nll else 0.0,
        text_tokens=len(nll),
        seconds=time.perf_counter() - started,
        qa_answers=tuple(replies),
    )


# --- The paired test and the promotion decision ------------------------------------------------

_EXACT_UP_TO = 2000
"""Discordant pairs up to which the binomial tail is summed in exact integers (beyond: log space)."""


def _binomial_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if n <= _EXACT_UP_TO:
        term, total = 1, 1
        for i in range(k):
            term = term * (n - i) // (i + 1)
            total += term
        return total / (1 << n)  # int / int rounds correctly, however large
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return math.exp(top) * math.fsum(math.exp(x - top) for x in logs)


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedResult:
    """Two models' correctness on the same rows.

    ``gain`` is the candidate's accuracy minus the current model's;
    ``ci_low``/``ci_high`` its confidence interval (Newcombe's hybrid score
    interval for paired proportions, 1998, method 10); ``p_value`` the exact
    two-sided McNemar test: a binomial test of ``candidate_only`` against
    ``current_only`` (the rows only one model gets right).
    """

    n: int
    both: int
    candidate_only: int
    current_only: int
    neither: int
    p_value: float
    gain: float
    ci_low: float
    ci_high: float
    level: float = 0.95

    @property
    def candidate_accuracy(self) -> float:
        return (self.both + self.candidate_only) / self.n if self.n else 0.0

    @property
    def current_accuracy(self) -> float:
        return (self.both + self.current_only) / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(candidate_accuracy=self.candidate_accuracy, current_accuracy=self.current_accuracy)
        out = {key: round(value, 6) if isinstance(value, float) else value for key, value in out.items()}
        out["p_value"] = float(f"{self.p_value:.4g}")  # a tiny p-value is news, not 0.0
        return out


def paired_test(
    candidate_correct: Sequence[bool], current_correct: Sequence[bool], *, level: float = 0.95
) -> PairedResult:
    """Exact McNemar test and the accuracy gain's interval, rows paired by position.

    >>> r = paired_test([True, True, False, True], [True, False, False, False])
    >>> r.candidate_only, r.current_only, r.gain, r.p_value
    (2, 0, 0.5, 0.5)
    """
    if len(candidate_correct) != len(current_correct):
        raise ValueError(f"paired rows differ in number: {len(candidate_correct)} and {len(current_correct)}")
    pairs = list(zip(map(bool, candidate_correct), map(bool, current_correct), strict=True))
    a, b = pairs.count((True, True)), pairs.count((True, False))
    c, d = pairs.count((False, True)), pairs.count((False, False))
    n = len(pairs)
    p_value = min(1.0, 2 * _binomial_tail(min(b, c), b + c)) if b + c else 1.0
    if n == 0:
        return PairedResult(0, 0, 0, 0, 0, 1.0, 0.0, -1.0, 1.0, level)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n, z)
    l2, u2 = _wilson(a + c, n, z)
    spread = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(spread) if spread else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    gain = p1 - p2
    return PairedResult(n, a, b, c, d, p_value, gain, max(-1.0, gain - below), min(1.0, gain + above), level)


@dataclass(frozen=True)
class GuardTolerance:
    """How much general ability a promoted student may lose against the model serving now.

    Measured with bench/edge_quality.py's measures: the int8 base answers 13 of
    the 20 questions, perplexity 9.13 on the agreement texts; quantisation noise
    moves perplexity 0.2-0.4% and no answer. Two real students (SmolLM2-135M,
    LoRA on 1000 Banking77 rows, 66 steps, merged, exported int8) both moved
    perplexity x1.21. One kept 13 of 20 (not the same 13) and scored 40% on the
    holdout; the other scored 55% but fell to 9 of 20, answering general
    questions with intent-style labels ("opposite_of_hot", "days_in_week"):
    the forgetting a guard must catch, and perplexity did not see it.

    So the QA count is the sharp guard: at most 2 of 20 answers lost (borderline
    answers flip both ways between fine-tunes; 3 is a fifth of what the base
    knows). Perplexity on prose is the coarse alarm for a broken model: at most
    x1.30 the serving model's, above what a healthy fine-tune costs (x1.21) and
    inside the damage the README's broken int4 builds showed (x1.15-x1.70).
    """

    qa_drop: int = 2
    perplexity_ratio: float = 1.30


DEFAULT_TOLERANCE = GuardTolerance()


@dataclass(frozen=True)
class Decision:
    """Whether a candidate may replace the current model, why, and the numbers behind it."""

    promotable: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"promotable": self.promotable, "reason": self.reason, "details": dict(self.details)}


def _guard_problems(candidate: GuardReport, current: GuardReport, tolerance: GuardTolerance) -> list[str]:
    problems = []
    if candidate.qa_total != current.qa_total or candidate.text_tokens != current.text_tokens:
        problems.append("guards measured on different data")
    drop = current.qa_right - candidate.qa_right
    if drop > tolerance.qa_drop:
        problems.append(
            f"QA regressed {current.qa_right}->{candidate.qa_right} of {candidate.qa_total} "
            f"(at most {tolerance.qa_drop} fewer allowed)"
        )
    ratio = math.exp(candidate.text_loss - current.text_loss)
    if ratio > tolerance.perplexity_ratio:
        problems.append(
            f"perplexity rose x{ratio:.3f} ({current.perplexity:.2f}->{candidate.perplexity:.2f}; "
            f"at most x{tolerance.perplexity_ratio:.2f} allowed)"
        )
    return problems


def decide_promotion(
    candidate: EvalReport,
    current: EvalReport,
    guards_candidate: GuardReport,
    guards_current: GuardReport,
    *,
    alpha: float = 0.05,
    min_gain: float = 0.0,
    guard_tolerance: GuardTolerance = DEFAULT_TOLERANCE,
) -> Decision:
    """Promote only a real gain on the holdout (``gain > min_gain`` and McNemar ``p < alpha``) that keeps the guards.

    Both reports must cover the same rows in the same order (:func:`evaluate` on the same rows).
    """
    if candidate.row_ids != current.row_ids:
        raise ValueError("the two evaluations are not on the same rows: evaluate both models on the same rows")
    paired = paired_test(candidate.correct, current.correct)
    problems = []
    if paired.gain <= min_gain:
        problems.append(f"no gain: {paired.gain:+.1%} (needs more than {min_gain:+.1%})")
    elif paired.p_value >= alpha:
        problems.append(f"gain {paired.gain:+.1%} is not significant (McNemar p={paired.p_value:.3g} >= {alpha})")
    problems += _guard_problems(guards_candidate, guards_current, guard_tolerance)
    summary = (
        f"{paired.gain:+.1%} exact match ({paired.current_accuracy:.1%}->{paired.candidate_accuracy:.1%}, "
        f"95% CI {paired.ci_low:+.1%}..{paired.ci_high:+.1%}, McNemar p={paired.p_value:.3g}, n={paired.n}); "
        f"QA {guards_current.qa_right}->{guards_candidate.qa_right} of {guards_candidate.qa_total}, "
        f"perplexity x{math.exp(guards_candidate.text_loss - guards_current.text_loss):.3f}"
    )
    details = {
        "paired": paired.to_dict(),
        "alpha": alpha,
        "min_gain": min_gain,
        "guard_tolerance": asdict(guard_tolerance),
        "guards": {"candidate": guards_candidate.to_dict(), "current": guards_current.to_dict()},
    }
    if problems:
        return Decision(False, "not promotable: " + "; ".join(problems) + f" [{summary}]", details)
    return Decision(True, f"promotable: {summary}", details)


# --- The confidence gate -----------------------------------------------------------------------


def _lowest_threshold(
    confidences: Sequence[float], correct: Sequence[bool], target: float, min_accepted: int, objective: str
) -> tuple[float, int, int] | None:
    """(threshold, accepted, right) for the lowest threshold that keeps ``target`` under ``objective``."""
    ranked = sorted(zip(confidences, correct, strict=True), key=lambda pair: pair[0], reverse=True)
    best = None
    accepted = right = 0
    total = len(ranked)
    while accepted < len(ranked) and math.isfinite(value := ranked[accepted][0]):
        # Equal confidences are accepted or refused together.
        while accepted < len(ranked) and ranked[accepted][0] == value:
            right += ranked[accepted][1]
            accepted += 1
        if objective == "kept":
            reached = right >= target * accepted - 1e-9
        else:  # route: the refused answers go to the cloud, whose answer is the reference
            reached = right + (total - accepted) >= target * total - 1e-9
        if accepted >= min_accepted and reached:
            best = (value, accepted, right)
    return best


GATE_OBJECTIVES = ("route", "kept")


def calibrate_gate(
    confidences_mean: Sequence[float],
    confidences_min: Sequence[float],
    correct: Sequence[bool],
    *,
    target_accuracy: float = 0.97,
    min_accepted: int = 20,
    objective: str = "route",
) -> ConfidenceGate:
    """The gate that keeps the most answers while accuracy stays at ``target_accuracy``.

    ``objective`` says whose accuracy:

    * ``route`` (the default): what the route's clients get, the student's kept
      answers and the cloud's for the rest. The rows' references are the
      cloud's own answers, so this is accuracy against the teacher, the measure
      an operator moving traffic off the cloud cares about;
    * ``kept``: the student's kept answers alone (stricter: refusing an answer
      does not count as getting it right).

    For each signal, the lowest threshold (an observed confidence) that reaches
    the target with at least ``min_accepted`` answers kept; the signal that
    keeps more wins (``mean`` on a tie). When neither reaches it: threshold
    0.0, coverage 0 (a log-probability is at most 0, so only an answer of
    certain tokens would pass).

    >>> gate = calibrate_gate([-0.1, -0.2, -2.0], [-0.3, -0.5, -4.0], [True, True, False],
    ...                       target_accuracy=0.9, min_accepted=2, objective="kept")
    >>> gate.threshold, gate.signal, round(gate.coverage, 3), gate.accepted_accuracy
    (-0.2, 'mean', 0.667, 1.0)
    """
    if not len(confidences_mean) == len(confidences_min) == len(correct):
        raise ValueError("confidences and correctness differ in length")
    if objective not in GATE_OBJECTIVES:
        raise ValueError(f"gate objective {objective!r}: use one of {', '.join(GATE_OBJECTIVES)}")
    total = len(correct)
    best: ConfidenceGate | None = None
    for signal, confidences in (("mean", confidences_mean), ("min", confidences_min)):
        found = _lowest_threshold(confidences, correct, target_accuracy, min_accepted, objective)
        if found is None:
            continue
        threshold, accepted, right = found
        gate = ConfidenceGate(
            threshold, signal, target_accuracy, accepted / total, right / accepted,
            objective=objective, route_accuracy=(right + total - accepted) / total,
        )  # fmt: skip
        if best is None or gate.coverage > best.coverage:
            best = gate
    return best or ConfidenceGate(0.0, "mean", target_accuracy, 0.0, 0.0, objective=objective, route_accuracy=1.0)


# --- distill eval ------------------------------------------------------------------------------


def _rows_for(data: Path, limit: int | None) -> tuple[list[Row], str, ReadReport]:
    if not data.exists():
        raise EdgeModelError(f"no data at {data}")
    report = ReadReport()
    rows = list(read_rows(data, report))
    split = "all"
    if data.is_dir():
        train, holdout = split_holdout(rows)
        if train and holdout:
            rows, split = holdout, "holdout"
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EdgeModelError(f"no valid rows in {data} ({report.skipped} lines skipped: {report.reasons})")
    return rows, split, report


def eval_cli(
    model: str,
    data: str,
    *,
    compare: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 32,
    threads: int | None = None,
    target_accuracy: float = 0.97,
    gate_objective: str = "route",
    alpha: float = 0.05,
    min_gain: float = 0.0,
    run_guards: bool = True,
    guard_data: str | None = None,
    per_row: bool = False,
    out: str | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``hybrid-router distill eval``: print one JSON object; 0 on success, 1 on an error.

    ``model`` and ``compare`` are model folders or built model names. ``data``
    is a JSONL file (every row is scored, ``"split": "all"``) or a capture
    folder (its holdout rows only when it has both, ``"split": "holdout"``).
    With ``compare`` (the model serving now), both are scored on the same rows
    and the JSON adds the paired test and the promotion decision (which needs
    the guards: ``run_guards=False`` leaves it out). ``out`` also writes the
    JSON to that file; ``per_row`` adds each row's answer and scores.
    """
    from edge_models.catalog import resolve_model

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr

    def say(line: str) -> None:
        print(line, file=stderr, flush=True)

    try:
        rows, split, read = _rows_for(Path(data), limit)
        folder = resolve_model(model)
        say(f"distill eval: {len(rows)} rows ({split}) from {data}")
        if split == "all" and Path(data).is_dir():
            say("distill eval: no train/holdout split in this folder: its rows may include training rows")
        report = evaluate(folder, rows, max_new_tokens=max_new_tokens, threads=threads, progress=say)
        guard_path = Path(guard_data) if guard_data else None
        mine = guards(folder, data=guard_path, threads=threads) if run_guards else None
        result: dict[str, Any] = {
            **report.to_dict(per_row=per_row),
            "data": data,
            "split": split,
            "lines_skipped": read.skipped,
            "gate": asdict(report.gate(target_accuracy, objective=gate_objective)),
            "guards": mine.to_dict() if mine else None,
        }
        if compare is not None:
            current = evaluate(resolve_model(compare), rows, max_new_tokens=max_new_tokens, threads=threads,
                               progress=say)  # fmt: skip
            result.update(_compare(report, current, mine, guard_path, threads, alpha=alpha, min_gain=min_gain))
    except (EdgeModelError, ValueError) as exc:
        say(f"distill eval failed: {exc}")
        return 1
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if out:
        Path(out).write_text(text + "\n")
    print(text, file=stdout)
    return 0


def _compare(
    report: EvalReport,
    current: EvalReport,
    mine: GuardReport | None,
    guard_path: Path | None,
    threads: int | None,
    *,
    alpha: float,
    min_gain: float,
) -> dict[str, Any]:
    paired = paired_test(report.correct, current.correct)
    out: dict[str, Any] = {"compare": current.to_dict(), "paired": paired.to_dict(), "decision": None}
    if mine is None:
        return out
    theirs = guards(Path(current.model), data=guard_path, threads=threads)
    out["compare"]["guards"] = theirs.to_dict()
    out["decision"] = decide_promotion(report, current, mine, theirs, alpha=alpha, min_gain=min_gain).to_dict()
    return out
