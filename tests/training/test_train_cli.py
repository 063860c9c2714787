"""`hybrid-router router train | eval | calibrate` on a small synthetic dataset with the built encoder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from service.cli import main

pytestmark = pytest.mark.model

HARD = [
    "Evaluate the integral of {} times sine x",
    "Prove the theorem about {} eigenvalues",
    "Derive the {} tensor identity",
]
EASY = ["What colour is a {} banana?", "Say hello to my friend {}", "Name a fruit that starts with {}"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(3)
    rows = []
    for i in range(600):
        hard = i % 2 == 0
        template = rng.choice(HARD if hard else EASY)
        question = template.format(
            rng.choice(["red", "blue", "green", "Anna", "Marco", "apple", "third", "fourth"]) + f" {i}"
        )
        # Hard questions: only the strong model is right; easy ones: both are (with a little noise).
        noise = rng.random() < 0.05
        rows.append(
            {"question": question, "weak_ok": int(not hard) ^ noise, "strong_ok": 1, "routellm_contaminated": False}
        )
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_train_eval_calibrate(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "head"
    cols = ["--data", str(dataset), "--weak-col", "weak_ok", "--strong-col", "strong_ok"]

    report = run(["router", "train", *cols, "--out", str(out)], capsys)
    assert (out / "difficulty_head.onnx").is_file()
    assert report["encoder"] == "static-256"
    assert report["validation"]["apgr"] > 0.7  # type: ignore[index]
    assert report["random"]["apgr"] == pytest.approx(0.5, abs=0.1)  # type: ignore[index]

    evaluation = run(
        ["router", "eval", *cols, "--model", str(out), "--split", "all", "--plot", str(tmp_path / "c.png")], capsys
    )
    assert set(evaluation) >= {"apgr", "cpt50", "cpt80", "auc", "random", "rows", "curve", "plot"}
    assert evaluation["rows"] == 600
    assert evaluation["apgr"] > 0.7  # type: ignore[operator]
    assert evaluation["cpt50"] < 0.45  # type: ignore[operator]
    assert (tmp_path / "c.png").stat().st_size > 1000

    calibration = run(
        ["router", "calibrate", "--data", str(dataset), "--cloud-share", "0.3", "--model", str(out)], capsys
    )
    assert calibration["cloud_share"] == pytest.approx(0.3, abs=0.01)
    assert 0 < calibration["threshold"] < 1  # type: ignore[operator]


def test_the_head_is_served_by_the_difficulty_head_class(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_models.embeddings import StaticEmbedder, encoder_dir
    from router.classify.difficulty import DifficultyHead

    run(
        [
            "router",
            "train",
            "--data",
            str(dataset),
            "--weak-col",
            "weak_ok",
            "--strong-col",
            "strong_ok",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    head = DifficultyHead(tmp_path / "difficulty_head.onnx")
    embedder = StaticEmbedder(encoder_dir())
    head.check_encoder(embedder.name, embedder.dims)
    hard = head.score(embedder.embed(["Evaluate the integral of blue 7 times sine x"])[0])
    easy = head.score(embedder.embed(["What colour is a red banana?"])[0])
    assert hard > 0.5 > easy
