"""The loop's plumbing end to end, small: capture -> train ~30 steps on 64 rows -> export -> eval -> promote
-> the swap is served -> rollback. Quality is the benchmark's business (bench/distill_banking77.py), not CI's."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from edge_models.distill.evaluate import eval_cli
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.pipeline import train_student
from edge_models.distill.registry import Registry
from edge_models.distill.rows import read_rows, split_holdout
from router.backends.edge import EdgeBackend
from router.backends.fake import ScriptedReply
from router.chat import ChatRequest
from router.config import OnnxTargetConfig
from service.app import create_app
from tests.conftest import cloud_backend, edge_backend, make_settings

pytestmark = [pytest.mark.model, pytest.mark.slow]

SYSTEM = "You sort short notes into two kinds and answer with the kind's name only: " + "even, odd. " * 30


def label(request: ChatRequest) -> ScriptedReply:
    number = int(request.messages[-1].text().split()[-1])
    return ScriptedReply(text="even" if number % 2 == 0 else "odd")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~80 cloud answers through the gateway with capture on."""
    data = tmp_path_factory.mktemp("capture")
    settings = make_settings(distill={"capture": {"enabled": True, "dir": str(data), "tasks": ["notes"]}})
    backends = {"edge": edge_backend(), "cloud": cloud_backend(label)}  # type: ignore[arg-type]
    app = create_app(settings, backends=backends, registry=CollectorRegistry())
    with TestClient(app) as client:
        for n in range(90):
            body = {"model": "cloud", "messages": [{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": f"note number {n}"}]}  # fmt: skip
            assert client.post("/v1/chat/completions", json=body, headers={"x-task": "notes"}).status_code == 200
        app.state.gateway.runtime.capturer.flush(10)
    return data


def test_capture_train_export_eval_promote_swap_rollback(captured: Path, tmp_path: Path, edge_model_dir: Path) -> None:
    rows = list(read_rows(captured))
    train, holdout = split_holdout(rows)
    assert len(rows) == 90 and train and holdout
    assert all(row["metadata"]["task"] == "notes" for row in rows)

    registry = Registry(tmp_path / "registry")
    models_dir = Path(os.environ.get("HYBRID_ROUTER_MODELS_DIR") or edge_model_dir.parent)
    options = {"max_rows": 64, "batch_size": 8, "epochs": 4, "precision": "bf16", "replay_share": 0.0,
               "time_budget_s": 600, "progress": False, "threads": 2, "nice": 0}  # fmt: skip
    student = train_student([captured], out=registry.root / "v1", models_dir=models_dir, options=options,
                            progress=lambda line: None)  # fmt: skip

    manifest = StudentManifest.load(student.folder)
    assert manifest.version == "v1" and manifest.train_rows == 64 and manifest.tasks == ("notes",)
    assert manifest.training["steps"] == 32
    assert list(manifest.prompt_aliases.values()) == [next(iter(manifest.prompt_aliases.values()))]
    assert (student.folder / "genai_config.json").is_file()

    out = tmp_path / "eval.json"
    assert eval_cli(str(student.folder), str(captured), run_guards=False, out=str(out)) == 0
    scored = json.loads(out.read_text())
    assert scored["split"] == "holdout" and scored["rows"] == len(holdout) and scored["version"] == "v1"
    assert 0.0 <= scored["exact_match"] <= 1.0 and scored["token_loss"] > 0

    edge = EdgeBackend("edge", OnnxTargetConfig.model_validate(
        {"type": "onnx", "model": str(edge_model_dir), "distilled": True, "registry": str(registry.root), "threads": 2}
    ))  # fmt: skip

    async def serve() -> list[str]:
        await edge.start()
        seen = [edge.model_version().version]  # type: ignore[union-attr]
        registry.promote("v1", forced="plumbing test")
        await edge.refresh()
        seen.append(edge.model_version().version)  # type: ignore[union-attr]
        request = ChatRequest.model_validate({"messages": [{"role": "system", "content": SYSTEM},
                                                           {"role": "user", "content": "note number 7"}],
                                              "max_tokens": 4, "temperature": 0})  # fmt: skip
        result = await edge.complete(request)
        assert result.body["choices"][0]["message"]["content"].strip()
        assert result.usage.prompt_tokens < 40  # the student reads the alias, not the long system prompt
        registry.rollback()
        await edge.refresh()
        seen.append(edge.model_version().version)  # type: ignore[union-attr]
        await edge.aclose()
        return seen

    assert asyncio.run(serve()) == ["base", "v1", "base"]
