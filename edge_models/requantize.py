"""Write the GGUF's own 4-bit blocks into the ONNX model, instead of quantising twice.

The shipped SmolLM2 GGUF is Q4_1: every block of 32 weights is ``d * q + m``
with ``q`` in 0..15 and a float ``d`` and ``m`` per block. Converting it to
fp32 and letting the ONNX builder quantise again (round-to-nearest or
k-quant) loses accuracy twice: measured top-1 agreement with the fp32 model
fell to 69-79%. But the fp32 weights *are* the Q4_1 grid, so each block's
``m`` and ``d`` come back exactly from its min and max. ``MatMulNBits`` with
its implicit zero point 8 computes ``x @ d(q - 8)``; the rest of
``d * q + m = d(q - 8) + (m + 8d)`` is a per-block constant, added back as
``blocksum(x) @ C`` with ``C[block, n] = m + 8d`` (a small MatMul over
K/32 block sums). Float zero points would express the same thing directly,
but ONNX Runtime's CPU kernels run them about 50x slower. The 8-bit
matrices (the tied lm_head, Q8_0 in the GGUF) are rewritten symmetric around 128.

Result: the GGUF's weights up to float rounding (100% top-1 agreement with
fp32 at accuracy level 1; 97% at level 4, where activations are quantised
to int8 for speed, like llama.cpp's own 96.6%).

:func:`requantize_exact` rewrites a model built with ``-p int4
--extra_options algo_config=k_quant_last`` (4-bit body, 8-bit lm_head, block
32), reading the float weights from an fp32 build of the same checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_models.errors import EdgeModelError, MissingDependency

__all__ = ["BLOCK", "requantize_exact"]

BLOCK = 32


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependency("re-quantising needs onnx: pip install 'hybrid-router[build]'") from exc
    return onnx


def _q4_blocks(weight: Any) -> tuple[Any, Any, Any]:
    """(packed 4-bit codes [N, nb, 16], scales d [N, nb], offsets m + 8d [N, nb]) for ``weight`` [N, K]."""
    n, k = weight.shape
    blocks = weight.reshape(n, k // BLOCK, BLOCK)
    low, high = blocks.min(-1), blocks.max(-1)
    scale = ((high - low) / 15.0).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    codes = np.clip(np.rint((blocks - low[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale, (low + 8 * scale).astype(np.float32)


def _q8_blocks(weight: Any) -> tuple[Any, Any, Any]:
    """(8-bit codes [N, nb, 32] centred on 128, scales [N, nb], zero points [N, nb] = 128)."""
    n, k = weight.shape
    blocks = weight.reshape(n, k // BLOCK, BLOCK)
    scale = (np.abs(blocks).max(-1) / 127.0).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    codes = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    return codes, scale, np.full(scale.shape, 128, dtype=np.uint8)


def _weight_name(node_name: str) -> str:
    # "/model/layers.0/attn/qkv_proj/MatMul_Q4" -> "model.layers.0.attn.qkv_proj.MatMul.weight"
    return node_name.replace("_Q4", "").replace("_Q8", "").lstrip("/").replace("/", ".") + ".weight"


def requantize_exact(quantised: Path, fp32: Path, out: Path, *, accuracy_level: int = 4) -> float:
    """Rewrite every ``MatMulNBits`` of ``quantised`` from ``fp32``'s weights; returns the largest
    relative reconstruction error (0 up to float rounding when the checkpoint is Q4_1)."""
    onnx = _onnx()
    from onnx import numpy_helper

    reference = {t.name: t for t in onnx.load(str(fp32 / "model.onnx")).graph.initializer}
    model = onnx.load(str(quantised / "model.onnx"))
    tensors = {t.name: t for t in model.graph.initializer}

    def put(name: str, array: Any) -> None:
        tensor = numpy_helper.from_array(array, name)
        if name in tensors:
            tensors[name].CopyFrom(tensor)
        else:
            model.graph.initializer.append(tensor)
            tensors[name] = model.graph.initializer[-1]

    worst = 0.0
    extra_nodes: list[Any] = []
    block_sums: dict[tuple[str, int], str] = {}
    for node in list(model.graph.node):
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a for a in node.attribute}
        bits, block = attrs["bits"].i, attrs["block_size"].i
        if block != BLOCK:
            raise EdgeModelError(f"{node.name}: block size {block}, expected {BLOCK}")
        source = reference.get(_weight_name(node.name))
        if source is None:
            raise EdgeModelError(f"{node.name}: no matching weight in the fp32 build")
        weight = numpy_helper.to_array(source).T.astype(np.float32)  # [N, K]
        attrs["accuracy_level"].i = accuracy_level
        if bits == 4:
            codes, scale, offset = _q4_blocks(weight)
            rebuilt = scale[..., None] * (_unpack4(codes) - 8) + offset[..., None]
            put(node.input[1], codes)
            put(node.input[2], scale)
            del node.input[3:]  # no zero points: the implicit 8
            sums = _block_sum(node.input[0], weight.shape[1] // BLOCK, block_sums, extra_nodes, put, onnx)
            constant = node.input[1] + "_block_offset"
            put(constant, offset.T.copy())  # [blocks, N]
            final = node.output[0]
            node.output[0] = final + "_without_offset"
            extra_nodes += [
                onnx.helper.make_node("MatMul", [sums, constant], [final + "_offset"], name=final + "_offset_mm"),
                onnx.helper.make_node("Add", [node.output[0], final + "_offset"], [final], name=final + "_offset_add"),
            ]
        elif bits == 8:
            codes, scale, zero = _q8_blocks(weight)
            rebuilt = scale[..., None] * (codes.astype(np.float32) - 128)
            put(node.input[1], codes)
            put(node.input[2], scale)
            if len(node.input) > 3 and node.input[3]:
                put(node.input[3], zero)
        else:
            raise EdgeModelError(f"{node.name}: {bits}-bit weights are not supported")
        blocks = weight.reshape(rebuilt.shape)
        worst = max(worst, float(np.abs(rebuilt - blocks).max() / (np.abs(blocks).max() + 1e-12)))
    _insert_sorted(model, extra_nodes, set(tensors))

    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    out.mkdir(parents=True, exist_ok=True)
    for item in quantised.iterdir():
        if not item.name.startswith("model.onnx"):
            shutil.copy(item, out / item.name)
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)  # fmt: skip
    return worst


def _unpack4(packed: Any) -> Any:
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.float32)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _block_sum(
    source: str, blocks: int, cache: dict[tuple[str, int], str], nodes: list[Any], put: Any, onnx: Any
) -> str:
    """The sums of ``source`` over each block of 32 along its last axis, shared by the matrices that read it."""
    key = (source, blocks)
    if key not in cache:
        shape, axis = f"{source}_blocks_shape", f"{source}_blocks_axis"
        put(shape, np.array([0, 0, blocks, BLOCK], dtype=np.int64))
        put(axis, np.array([-1], dtype=np.int64))
        nodes += [
            onnx.helper.make_node("Reshape", [source, shape], [f"{source}_blocks"], name=f"{source}_blocks_reshape"),
            onnx.helper.make_node("ReduceSum", [f"{source}_blocks", axis], [f"{source}_block_sums"],
                                  name=f"{source}_block_sums", keepdims=0),
        ]  # fmt: skip
        cache[key] = f"{source}_block_sums"
    return cache[key]


def _insert_sorted(model: Any, extra: list[Any], initializers: set[str]) -> None:
    """Add ``extra`` nodes and put the graph back in topological order."""
    nodes = list(model.graph.node) + extra
    available = {i.name for i in model.graph.input} | initializers | {""}
    ordered: list[Any] = []
    pending = nodes
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise EdgeModelError("re-quantised graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
