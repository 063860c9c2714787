"""One turn of the loop: judge a trained student against the serving model, record it, promote it if it won.

``hybrid-router distill eval --record`` and ``distill.auto`` call :func:`judge`;
``distill.auto`` and ``hybrid-router distill cycle`` call :func:`run_cycle`
(train, judge, promote). The judgement is written into the candidate's
``distill.json``: holdout accuracy and token loss, the paired test against the
serving model, the guards, the calibrated confidence gate, and ``promotable``
with the reason, so ``distill promote`` (and the router, through the gate)
act on what was measured.

The holdout is the capture store's permanent slice (never trained on). The
candidate is scored on all of it (its accuracy and its gate); the paired test
runs both models on the first ``compare_rows`` of it, because the serving model
may read the route's full system prompt, which costs it ~10x the student's time
per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edge_models.catalog import DEFAULT_MODEL, DEFAULT_PRECISION, resolve_model
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.registry import Registry
from edge_models.distill.rows import ReadReport, Row, answer_of, read_rows, split_holdout
from edge_models.errors import EdgeModelError

__all__ = ["CycleResult", "Judgement", "holdout_rows", "judge", "run_cycle", "serving_folder"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Judgement:
    promotable: bool
    reason: str
    holdout_accuracy: float
    current_accuracy: float | None
    gate: Mapping[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_rows(data: Path) -> list[Row]:
    """The permanent holdout rows of a capture folder or JSONL file."""
    _, holdout = split_holdout(read_rows(data, ReadReport()))
    if not holdout:
        raise EdgeModelError(f"{data} has no holdout rows to judge a student on")
    return holdout


def serving_folder(registry: Registry, base: str = DEFAULT_MODEL, models_dir: Path | None = None) -> Path:
    """The model serving now: the registry's current version, or the base model."""
    return registry.current_folder() or resolve_model(base, DEFAULT_PRECISION, models_dir)


def judge(
    candidate: Path,
    data: Path,
    *,
    current: Path,
    compare_rows: int = 400,
    target_accuracy: float = 0.97,
    gate_objective: str = "route",
    alpha: float = 0.05,
    threads: int | None = None,
    progress: Progress = print,
) -> Judgement:
    """Score ``candidate`` and ``current`` on the holdout and the guards; record the result in its manifest."""
    from edge_models.distill.evaluate import decide_promotion, evaluate, guards

    started = time.perf_counter()
    manifest = StudentManifest.load(candidate)
    rows = holdout_rows(data)
    progress(f"judging {manifest.version} on {len(rows)} holdout rows against {current}")
    # An answer longer than every reference cannot match one: generation stops a little past the longest.
    longest = max(len(answer_of(row["messages"]) or "") for row in rows)
    max_new = min(64, longest // 2 + 8)
    mine = evaluate(candidate, rows, threads=threads, progress=progress, max_new_tokens=max_new)
    gate = mine.gate(target_accuracy, objective=gate_objective)
    paired_rows = rows[:compare_rows]
    theirs = evaluate(current, paired_rows, threads=threads, progress=progress, max_new_tokens=max_new)
    mine_paired = _first(mine, len(theirs.correct)) if len(paired_rows) < len(rows) else mine
    guards_mine, guards_theirs = guards(candidate, threads=threads), guards(current, threads=threads)
    decision = decide_promotion(mine_paired, theirs, guards_mine, guards_theirs, alpha=alpha)
    seconds = time.perf_counter() - started
    metrics = {
        "holdout": mine.to_dict(),
        "current": theirs.to_dict(),
        "paired_rows": len(theirs.correct),
        "promotable": decision.promotable,
        "decision": decision.reason,
        "details": decision.details,
    }
    updated = replace(manifest, gate=gate, metrics=metrics, seconds={**manifest.seconds, "eval": round(seconds, 1)})
    updated.save(candidate)
    progress(decision.reason)
    return Judgement(
        decision.promotable, decision.reason, mine.exact_match, theirs.exact_match, asdict(gate), round(seconds, 1)
    )


def _first(report: Any, count: int) -> Any:
    """``report`` cut to its first ``count`` rows (the rows the other model was scored on)."""
    fields = ("row_ids", "correct", "confidence_mean", "confidence_min", "loss", "reference_tokens",
              "prompt_tokens", "answers")  # fmt: skip
    cut = {name: getattr(report, name)[:count] for name in fields}
    right = sum(cut["correct"])
    return replace(report, n=count, exact_match=right / count if count else 0.0, **cut)


@dataclass(frozen=True)
class CycleResult:
    version: str
    promoted: bool
    judgement: Judgement
    seconds: Mapping[str, float]


def run_cycle(
    data: Path,
    *,
    base: str = DEFAULT_MODEL,
    models_dir: Path | None = None,
    registry: Registry,
    time_budget_s: float = 1800.0,
    options: Mapping[str, Any] | None = None,
    promote: bool = True,
    progress: Progress = print,
    train: Callable[..., Any] | None = None,
) -> CycleResult:
    """Train a student on ``data``, judge it against the serving model, promote it when it won."""
    from edge_models.distill.pipeline import train_student

    started = time.perf_counter()
    current = serving_folder(registry, base, models_dir)
    trained = (train or train_student)(
        [data], base=base, out=registry.root / registry.next_version(), models_dir=models_dir,
        options={"time_budget_s": time_budget_s, **(options or {})}, progress=progress,
    )  # fmt: skip
    trained_s = time.perf_counter() - started
    verdict = judge(trained.folder, data, current=current, progress=progress)
    promoted = False
    if promote and verdict.promotable:
        registry.promote(trained.folder.name, reason=verdict.reason[:300])
        promoted = True
        progress(f"promoted {trained.folder.name}")
    seconds = {"train": round(trained_s, 1), "judge": verdict.seconds, "total": round(time.perf_counter() - started, 1)}
    return CycleResult(trained.folder.name, promoted, verdict, seconds)
