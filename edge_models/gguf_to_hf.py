"""Convert a GGUF checkpoint into a Hugging Face model folder (fp32).

Run as a subprocess by :mod:`edge_models.build`, so torch and transformers
are loaded only in this short-lived process, never in the gateway's.

    python -m edge_models.gguf_to_hf --gguf FILE --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from edge_models.catalog import known_model_for_file
from edge_models.errors import MissingDependency

__all__ = ["convert"]

INSTALL_HINT = "pip install 'hybrid-router[build]'  (torch, transformers, gguf, accelerate, onnx-ir, onnxscript)"


def convert(gguf: Path, out: Path, generation: Mapping[str, float | int | bool] | None = None) -> None:
    """Write ``gguf`` as a Hugging Face folder; ``generation`` (default: the catalog's) into its generation config."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependency(f"building the edge model needs the build extra: {INSTALL_HINT}") from exc
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized (they were dequantized
    # on load) and refuses to save them; the weights are plain fp32 by now.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - not a declared attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if generation is None:
        known = known_model_for_file(gguf.name)
        generation = known.generation if known else {}
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        convert(args.gguf, args.out)
    except MissingDependency as exc:
        print(exc, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
