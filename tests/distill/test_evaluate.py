"""distill eval: the paired promotion test, the confidence gate, and scoring the student as it is served."""

from __future__ import annotations

import io
import json
import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from edge_models.distill import evaluate as ev
from edge_models.distill.evaluate import (
    DEFAULT_GUARD_DATA,
    EvalReport,
    GuardReport,
    GuardTolerance,
    calibrate_gate,
    decide_promotion,
    eval_cli,
    evaluate,
    guards,
    normalize_answer,
    paired_test,
    teacher_forced_logprobs,
)
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.prefix import alias_for, system_hash
from edge_models.distill.rows import is_holdout
from edge_models.runtime import EdgeModel, SamplingOptions
from router.backends.cascade import confidence

# --- answers and the cascade's confidence --------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("card_arrival", "card_arrival"),
        ("  Card_Arrival.\n", "card_arrival"),
        ("The capital  of\tFrance is Paris.", "the capital of france is paris"),
        ("STRASSE", "straße"),  # case-folded, not only lower-cased
    ],
)
def test_normalization_forgives_case_space_and_a_final_period(answer: str, reference: str) -> None:
    assert normalize_answer(answer) == normalize_answer(reference)


@pytest.mark.parametrize(
    ("answer", "reference"), [("card_arrival", "card_linking"), ("Paris!", "Paris"), ("Par is", "Paris")]
)
def test_normalization_keeps_what_changes_the_answer(answer: str, reference: str) -> None:
    assert normalize_answer(answer) != normalize_answer(reference)


def test_confidence_is_the_cascades_own() -> None:
    rng = random.Random(3)
    for _ in range(50):
        logprobs = [-rng.expovariate(2.0) for _ in range(rng.randint(1, 12))]
        assert ev._confidence(logprobs, "mean") == confidence(logprobs, "mean")
        assert ev._confidence(logprobs, "min") == confidence(logprobs, "min")
    assert ev._confidence([], "mean") == -math.inf and confidence([]) is None


# --- the paired test ----------------------------------------------------------------------------


def pairs(both: int, candidate_only: int, current_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    cand = [True] * both + [True] * candidate_only + [False] * current_only + [False] * neither
    cur = [True] * both + [False] * candidate_only + [True] * current_only + [False] * neither
    return cand, cur


def exact_two_sided(b: int, c: int) -> float:
    n = b + c
    tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_matches_a_hand_computed_binomial() -> None:
    # 10 rows only the candidate gets right, 2 only the current model: P = 2 * (1 + 12 + 66) / 2**12.
    result = paired_test(*pairs(50, 10, 2, 8))

    assert (result.n, result.both, result.candidate_only, result.current_only, result.neither) == (70, 50, 10, 2, 8)
    assert result.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert result.gain == pytest.approx(8 / 70)
    assert result.candidate_accuracy == pytest.approx(60 / 70) and result.current_accuracy == pytest.approx(52 / 70)
    assert result.to_dict()["p_value"] == 0.03857


def test_a_tiny_p_value_survives_the_json() -> None:
    assert paired_test(*pairs(0, 40, 0, 60)).to_dict()["p_value"] == pytest.approx(2 / 2**40, rel=1e-3)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 3), (1, 0), (0, 6), (7, 1), (30, 12), (140, 100)])
def test_mcnemar_is_the_exact_two_sided_binomial(b: int, c: int) -> None:
    assert paired_test(*pairs(20, b, c, 5)).p_value == pytest.approx(exact_two_sided(b, c), rel=1e-12)


def test_the_log_space_tail_for_large_counts_agrees_with_exact_integers() -> None:
    for n, k in [(2001, 950), (2500, 1180), (5000, 2480)]:
        exact = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
        assert ev._binomial_tail(k, n) == pytest.approx(float(exact), rel=1e-9)


def test_the_gains_interval_holds_the_gain_and_narrows_with_more_rows() -> None:
    small = paired_test(*pairs(20, 6, 2, 2))
    large = paired_test(*pairs(2000, 600, 200, 200))

    for result in (small, large):
        assert -1 <= result.ci_low < result.gain < result.ci_high <= 1
    assert small.gain == pytest.approx(large.gain)
    assert large.ci_high - large.ci_low < (small.ci_high - small.ci_low) / 5
    # For many rows the score interval approaches the Wald interval of a paired difference.
    n, b, c = 3000, 600, 200
    half = 1.959964 * math.sqrt(b + c - (b - c) ** 2 / n) / n
    assert large.ci_low == pytest.approx(large.gain - half, abs=2e-3)
    assert large.ci_high == pytest.approx(large.gain + half, abs=2e-3)


def test_identical_models_show_no_gain_and_no_evidence() -> None:
    same = [True, False, True, True, False] * 10
    result = paired_test(same, same)

    assert result.gain == 0 and result.p_value == 1.0
    assert result.ci_low < 0 < result.ci_high


def test_unpaired_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        paired_test([True, False], [True])


# --- the promotion decision ---------------------------------------------------------------------


def report(correct: list[bool], *, ids: list[str] | None = None) -> EvalReport:
    return EvalReport(
        model="m", version="v", n=len(correct), exact_match=sum(correct) / len(correct), token_loss=1.0, seconds=0.0,
        row_ids=tuple(ids or [str(i) for i in range(len(correct))]), correct=tuple(correct),
    )  # fmt: skip


def guard(qa_right: int = 13, perplexity: float = 9.13) -> GuardReport:
    return GuardReport(qa_right=qa_right, qa_total=20, text_loss=math.log(perplexity), text_tokens=3066, seconds=0)


def test_a_significant_gain_that_keeps_the_guards_is_promotable() -> None:
    cand, cur = pairs(50, 20, 3, 27)
    # Like the healthy Banking77 student measured (GuardTolerance): perplexity x1.21, QA within 2.
    decision = decide_promotion(report(cand), report(cur), guard(12, 11.02), guard(13, 9.13))

    assert decision.promotable, decision.reason
    assert decision.details["paired"]["p_value"] < 0.05
    assert "QA 13->12 of 20" in decision.reason


def test_no_gain_is_not_promotable() -> None:
    cand, cur = pairs(50, 5, 5, 40)
    decision = decide_promotion(report(cand), report(cur), guard(), guard())

    assert not decision.promotable and "no gain" in decision.reason


def test_a_gain_the_test_cannot_tell_from_chance_is_not_promotable() -> None:
    cand, cur = pairs(50, 4, 1, 45)  # +3 rows, p = 0.375
    decision = decide_promotion(report(cand), report(cur), guard(), guard())

    assert not decision.promotable and "not significant" in decision.reason


def test_min_gain_raises_the_bar() -> None:
    cand, cur = pairs(500, 30, 5, 465)  # +2.5 points, p < 0.001
    assert decide_promotion(report(cand), report(cur), guard(), guard()).promotable
    assert not decide_promotion(report(cand), report(cur), guard(), guard(), min_gain=0.03).promotable


@pytest.mark.parametrize(
    ("candidate_guard", "why"),
    [(guard(qa_right=10), "QA regressed 13->10"), (guard(perplexity=9.13 * 1.4), "perplexity rose x1.400")],
)
def test_a_guard_regression_is_not_promotable_however_large_the_gain(candidate_guard: GuardReport, why: str) -> None:
    cand, cur = pairs(50, 40, 0, 10)
    decision = decide_promotion(report(cand), report(cur), candidate_guard, guard())

    assert not decision.promotable
    assert why in decision.reason


def test_tolerances_are_settable() -> None:
    cand, cur = pairs(50, 40, 0, 10)
    loose = GuardTolerance(qa_drop=4, perplexity_ratio=1.50)
    assert not decide_promotion(report(cand), report(cur), guard(9, 12.8), guard()).promotable
    assert decide_promotion(report(cand), report(cur), guard(9, 12.8), guard(), guard_tolerance=loose).promotable


def test_reports_on_different_rows_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="same rows"):
        decide_promotion(report([True, False]), report([True, False], ids=["a", "b"]), guard(), guard())


# --- the confidence gate ------------------------------------------------------------------------


def test_the_gate_is_the_lowest_threshold_that_keeps_the_target() -> None:
    # 100 answers, more confident ones more often right: the top 60 are all right, then 1 in 2.
    mean = [-0.01 * i for i in range(100)]
    correct = [i < 60 or i % 2 == 0 for i in range(100)]
    gate = calibrate_gate(mean, [m * 3 for m in mean], correct, target_accuracy=0.95, objective="kept")

    accepted = [ok for c, ok in zip(mean, correct, strict=True) if c >= gate.threshold]
    assert gate.signal == "mean"
    assert sum(accepted) / len(accepted) >= 0.95 == gate.target_accuracy
    # One more answer would break the target.
    lower = max(c for c in mean if c < gate.threshold)
    more = [ok for c, ok in zip(mean, correct, strict=True) if c >= lower]
    assert sum(more) / len(more) < 0.95
    assert gate.coverage == pytest.approx(len(accepted) / 100)
    assert gate.accepted_accuracy == pytest.approx(sum(accepted) / len(accepted))


def test_the_gate_picks_the_signal_that_keeps_more_answers() -> None:
    rng = random.Random(5)
    correct = [rng.random() < 0.7 for _ in range(400)]
    # min separates right from wrong; mean is noise.
    low = [(-0.2 if ok else -2.0) - rng.random() * 0.1 for ok in correct]
    mean = [-rng.random() for _ in correct]
    gate = calibrate_gate(mean, low, correct, target_accuracy=0.97, objective="kept")

    assert gate.signal == "min"
    # Every right answer, plus the few wrong ones the target leaves room for.
    right = sum(correct)
    assert gate.accepted_accuracy >= 0.97
    assert right / 400 < gate.coverage <= right / 0.97 / 400


def test_an_unreachable_target_accepts_nothing() -> None:
    correct = [i % 2 == 0 for i in range(100)]
    confidences = [-0.01 * i for i in range(100)]
    gate = calibrate_gate(confidences, confidences, correct, target_accuracy=0.97, objective="kept")

    assert (gate.threshold, gate.coverage, gate.accepted_accuracy) == (0.0, 0.0, 0.0)


def test_the_route_objective_counts_what_clients_get_with_the_cloud_answering_the_rest() -> None:
    # 100 answers: the top 70 right but for 2, then 1 in 2. Clients get the cloud's (right) answer when refused.
    mean = [-0.01 * i for i in range(100)]
    correct = [i not in (10, 20) if i < 70 else i % 2 == 0 for i in range(100)]
    gate = calibrate_gate(mean, mean, correct, target_accuracy=0.95)

    kept = [ok for c, ok in zip(mean, correct, strict=True) if c >= gate.threshold]
    wrong_kept = len(kept) - sum(kept)
    assert gate.objective == "route"
    assert gate.route_accuracy == pytest.approx(1 - wrong_kept / 100) and gate.route_accuracy >= 0.95
    # At most 5 wrong answers reach clients, and one more kept answer would be the 6th.
    assert wrong_kept == 5
    assert not correct[len(kept)]
    # The kept answers alone are below the target: the stricter objective keeps fewer.
    assert gate.accepted_accuracy < 0.95
    assert calibrate_gate(mean, mean, correct, target_accuracy=0.95, objective="kept").coverage < gate.coverage


def test_an_unknown_gate_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="objective"):
        calibrate_gate([-0.1], [-0.1], [True], objective="clients")


def test_too_few_accepted_answers_do_not_make_a_gate() -> None:
    # Only the 5 most confident answers are right: perfect, but too few to trust.
    correct = [i < 5 for i in range(100)]
    confidences = [-0.01 * i for i in range(100)]
    assert calibrate_gate(confidences, confidences, correct, min_accepted=20, objective="kept").coverage == 0.0
    assert calibrate_gate(confidences, confidences, correct, min_accepted=5, objective="kept").coverage == 0.05


def test_tied_confidences_are_accepted_or_refused_together() -> None:
    confidences = [0.0] * 30 + [-0.5] * 10
    correct = [True] * 30 + [True] * 5 + [False] * 5
    gate = calibrate_gate(confidences, confidences, correct, target_accuracy=0.9, objective="kept")

    assert gate.threshold == 0.0 and gate.coverage == 0.75


def test_rows_without_a_confidence_are_never_accepted() -> None:
    gate = calibrate_gate([-0.1] * 30 + [-math.inf] * 10, [-0.1] * 30 + [-math.inf] * 10, [True] * 40)

    assert gate.threshold == -0.1 and gate.coverage == 0.75


# --- choosing the rows --------------------------------------------------------------------------


def chat_row(question: str, answer: str, system: str | None = None, role: str = "system") -> dict[str, Any]:
    head = [{"role": role, "content": system}] if system is not None else []
    return {"messages": [*head, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_capture_folder_is_scored_on_its_holdout_and_a_file_on_every_row(tmp_path: Path) -> None:
    rows = [chat_row(f"question {i}", f"answer {i}") for i in range(60)]
    held = [row for row in rows if is_holdout(row["messages"])]
    assert 0 < len(held) < len(rows)
    write_jsonl(tmp_path / "capture" / "2026-01-01.jsonl", rows)
    file = write_jsonl(tmp_path / "valid.jsonl", rows)

    chosen, split, _ = ev._rows_for(tmp_path / "capture", None)
    assert (chosen, split) == (held, "holdout")
    chosen, split, _ = ev._rows_for(file, 5)
    assert (chosen, split) == (rows[:5], "all")


def test_eval_cli_fails_plainly_without_data_or_model(tmp_path: Path) -> None:
    err = io.StringIO()
    assert eval_cli(str(tmp_path / "no-model"), str(tmp_path / "none.jsonl"), stdout=io.StringIO(), stderr=err) == 1
    assert "no data at" in err.getvalue()
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row("q", "a")])
    err = io.StringIO()
    assert eval_cli(str(tmp_path / "no-model"), str(data), stdout=io.StringIO(), stderr=err) == 1
    assert "does not exist" in err.getvalue()


# --- the real model -----------------------------------------------------------------------------

FIXED = "You label banking customer messages with exactly one intent from the list below. " * 6


@pytest.fixture(scope="module")
def model(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=2)


@pytest.fixture(scope="module")
def student_dir(edge_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model's files under a distilled manifest that aliases FIXED."""
    folder = tmp_path_factory.mktemp("student")
    for item in edge_model_dir.iterdir():
        (folder / item.name).symlink_to(item)
    StudentManifest(
        version="v7", parent="base", data_sha256="0" * 64, train_rows=0, holdout_rows=0, created_at="2026-01-01",
        prompt_aliases={system_hash(FIXED): alias_for(system_hash(FIXED))},
    ).save(folder)  # fmt: skip
    return folder


def greedy(model: EdgeModel, question: str) -> str:
    return "".join(model.generate(model.encode_chat([{"role": "user", "content": question}]), SamplingOptions(32)))


@pytest.mark.model
def test_evaluate_scores_the_greedy_answer_and_the_references_loss(model: EdgeModel, edge_model_dir: Path) -> None:
    own = greedy(model, "What is the capital of France?").strip()
    rows = [
        chat_row("What is the capital of France?", own),
        chat_row("What is the capital of France?", "zq vex 93 plok frmb"),
        chat_row("What is the capital of Japan?", "Tokyo", system="You answer in one word.", role="developer"),
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
                      {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    ]  # fmt: skip
    result = evaluate(edge_model_dir, rows, model=model, max_new_tokens=32)

    assert (result.n, result.version, result.skipped) == (4, "base", 0)
    assert result.correct[0] and not result.correct[1]
    assert result.answers[0] == result.answers[1] == own
    assert result.exact_match == pytest.approx(sum(result.correct) / 4)
    assert all(math.isfinite(loss) and loss > 0 for loss in result.loss)
    # The model's own greedy answer is far likelier than noise.
    assert result.loss[0] < 1.0 < 3.0 < result.loss[1]
    # Its loss was read off the greedy pass, and is what teacher forcing gives.
    assert result.forced <= 3
    ids = model.encode_chat([{"role": "user", "content": "What is the capital of France?"}]).tolist()
    forced = teacher_forced_logprobs(model, ids, [*model.encode(own).tolist(), ev._end_of_turn(model)])
    assert result.loss[0] == pytest.approx(-sum(forced) / len(forced), abs=1e-5)
    # The reference's tokens plus the end-of-turn token (<|im_end|>, the eos).
    assert result.reference_tokens[0] == len(model.encode(own)) + 1
    weighted = sum(loss * n for loss, n in zip(result.loss, result.reference_tokens, strict=True))
    assert result.token_loss == pytest.approx(weighted / sum(result.reference_tokens))
    # Confidence of the greedy answer, as the cascade computes it.
    assert result.confidence_min[0] <= result.confidence_mean[0] < 0
    assert result.confidence_mean[0] == result.confidence_mean[1]
    # A developer message is a system message to the template, as the edge backend serves it.
    served = [{"role": "system", "content": "You answer in one word."},
              {"role": "user", "content": "What is the capital of Japan?"}]  # fmt: skip
    assert result.prompt_tokens[2] == len(model.encode_chat(served))
    assert json.loads(json.dumps(result.to_dict(per_row=True)))["per_row"][0]["answer"] == own


@pytest.mark.model
def test_answers_and_confidences_are_the_served_generations(model: EdgeModel, edge_model_dir: Path) -> None:
    rows = [
        chat_row("What is the capital of France?", "Paris"),  # ends on its own
        chat_row("My card has not arrived yet.", "card_arrival", system=FIXED),  # runs to the token budget
        chat_row("zq vex", "plok"),
    ]
    result = evaluate(edge_model_dir, rows, model=model, max_new_tokens=12)

    for row, answer, mean, low in zip(rows, result.answers, result.confidence_mean, result.confidence_min, strict=True):
        served = model.generate(model.encode_chat(row["messages"][:-1]), SamplingOptions(12), logprobs=True)
        assert answer == "".join(served).strip()
        assert mean == pytest.approx(confidence(served.token_logprobs, "mean"), abs=1e-6)
        assert low == pytest.approx(confidence(served.token_logprobs, "min"), abs=1e-6)
        # The reference forced after rewinding the greedy pass equals a fresh teacher-forced pass.
        ids = model.encode_chat(row["messages"][:-1]).tolist()
        targets = [*model.encode(row["messages"][-1]["content"]).tolist(), ev._end_of_turn(model)]
        fresh = teacher_forced_logprobs(model, ids, targets)
        assert result.loss[rows.index(row)] == pytest.approx(-sum(fresh) / len(fresh), abs=1e-5)
    assert result.forced == 3


@pytest.mark.model
def test_the_loss_is_the_teacher_forced_log_likelihood(model: EdgeModel) -> None:
    ids = model.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    generation = model.generate(ids, SamplingOptions(32), logprobs=True)
    text = "".join(generation)
    assert generation.finish_reason == "stop"

    # Forcing the greedy tokens (+ eos) gives back the log-probabilities greedy decoding saw.
    forced = teacher_forced_logprobs(model, ids.tolist(), [*model.encode(text).tolist(), ev._end_of_turn(model)])
    assert forced == pytest.approx(generation.token_logprobs, abs=1e-4)


@pytest.mark.model
def test_a_fixed_system_prompt_is_replaced_by_the_manifests_alias(
    model: EdgeModel, edge_model_dir: Path, student_dir: Path
) -> None:
    rows = [chat_row("My card has not arrived yet.", "card_arrival", system=FIXED), chat_row("Hello", "Hi.")]
    base = evaluate(edge_model_dir, rows, model=model, max_new_tokens=8)
    student = evaluate(student_dir, rows, model=model, max_new_tokens=8)

    alias = [{"role": "system", "content": alias_for(system_hash(FIXED))},
             {"role": "user", "content": "My card has not arrived yet."}]  # fmt: skip
    assert student.version == "v7"
    assert student.prompt_tokens[0] == len(model.encode_chat(alias)) < base.prompt_tokens[0] - 50
    assert student.prompt_tokens[1] == base.prompt_tokens[1]  # no fixed prompt: unchanged
    assert student.loss[1] == pytest.approx(base.loss[1])


@pytest.mark.model
def test_guards_reproduce_the_benchmarks_measures(model: EdgeModel, edge_model_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime_genai as og

    # A slice of the guard data: the whole set takes a minute or more on two cores (README: 13 of 20, ppl 9.13).
    texts = (DEFAULT_GUARD_DATA / "edge_agreement_texts.jsonl").read_text().splitlines()[:1]
    questions = (DEFAULT_GUARD_DATA / "edge_qa.jsonl").read_text().splitlines()[:5]
    (tmp_path / "edge_agreement_texts.jsonl").write_text("\n".join(texts) + "\n")
    (tmp_path / "edge_qa.jsonl").write_text("\n".join(questions) + "\n")
    result = guards(edge_model_dir, data=tmp_path, model=model)

    # France, Japan and Germany right; Italy and Spain wrong, as bench/edge_quality.py scores them.
    assert (result.qa_right, result.qa_total) == (3, 5)
    assert "Paris" in result.qa_answers[0] and "Rome" not in result.qa_answers[2]
    # bench/edge_quality.py's perplexity, computed its way: token 0, then one token at a time.
    nll = []
    for line in texts:
        ids = [0, *model.encode(json.loads(line)["text"]).tolist()]
        params = og.GeneratorParams(model.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(model.model, params)
        for position, token in enumerate(ids[:-1]):
            generator.append_tokens([token])
            logits = np.asarray(generator.get_logits(), dtype=np.float64).reshape(-1)
            logits -= logits.max()
            nll.append(-(logits[ids[position + 1]] - np.log(np.exp(logits).sum())))
    assert result.text_tokens == len(nll)
    assert result.text_loss == pytest.approx(float(np.mean(nll)), abs=1e-4)
    assert 4 < result.perplexity < 100
    assert result.to_dict()["perplexity"] == pytest.approx(result.perplexity, abs=1e-4)


@pytest.mark.model
def test_eval_cli_prints_the_scores_the_gate_and_the_decision(
    edge_model_dir: Path, student_dir: Path, tmp_path: Path
) -> None:
    rows = [chat_row(f"Is {i} a number?", "Yes.") for i in range(4)]
    data = write_jsonl(tmp_path / "valid.jsonl", rows)
    guard_dir = tmp_path / "guards"
    guard_dir.mkdir()
    (guard_dir / "edge_agreement_texts.jsonl").write_text(json.dumps({"id": "t", "text": "The sky is blue."}) + "\n")
    (guard_dir / "edge_qa.jsonl").write_text(
        json.dumps({"question": "Capital of France?", "answers": ["paris"]}) + "\n"
    )
    out, saved = io.StringIO(), tmp_path / "eval.json"

    code = eval_cli(
        str(student_dir), str(data), compare=str(edge_model_dir), limit=3, max_new_tokens=6, threads=2,
        guard_data=str(guard_dir), out=str(saved), stdout=out, stderr=io.StringIO(),
    )  # fmt: skip

    assert code == 0
    result = json.loads(out.getvalue())
    assert result == json.loads(saved.read_text())
    assert (result["version"], result["rows"], result["split"]) == ("v7", 3, "all")
    assert set(result["gate"]) == {
        "threshold", "signal", "target_accuracy", "coverage", "accepted_accuracy", "objective", "route_accuracy"
    }  # fmt: skip
    assert result["guards"]["qa_total"] == 1 and result["guards"]["text_tokens"] > 3
    # The same weights on the same rows: no gain, so no promotion.
    assert result["paired"]["gain"] == 0 and result["paired"]["p_value"] == 1.0
    assert result["decision"]["promotable"] is False and "no gain" in result["decision"]["reason"]
    assert result["compare"]["version"] == "base"
