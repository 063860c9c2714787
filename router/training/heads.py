"""Training the difficulty head and writing it as a tiny ONNX model.

The head maps an embedding to P(edge worse than cloud). Two kinds are fitted
and the better on held-out APGR is kept:

* ``logistic``: standardised features, L2-regularised logistic regression;
* ``mlp``: one hidden ReLU layer (64 units), early-stopped.

Either is written with plain ONNX ops (MatMul, Add, Relu, Sigmoid) and the
input scaling folded into the first layer, so serving needs only
onnxruntime. Metadata records the encoder the head was trained on, which the
gateway checks at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.training.metrics import evaluate_router

__all__ = ["FittedHead", "fit_heads", "write_onnx"]

Array = npt.NDArray[Any]


@dataclass
class FittedHead:
    kind: str
    layers: list[tuple[Array, Array]]  # (weight [in, out], bias [out]); ReLU between, sigmoid after
    selection_apgr: float

    def predict(self, features: Array) -> Array:
        hidden = np.asarray(features, dtype=np.float64)
        for index, (weight, bias) in enumerate(self.layers):
            hidden = hidden @ weight + bias
            if index < len(self.layers) - 1:
                hidden = np.maximum(hidden, 0)
        return 1 / (1 + np.exp(-hidden.reshape(-1)))


def _sklearn() -> Any:
    try:
        import sklearn.linear_model
        import sklearn.neural_network
    except ImportError as exc:
        raise SystemExit("training needs scikit-learn: pip install 'hybrid-router[build]'") from exc
    return sklearn


def fit_heads(
    train_x: Array, train_y: Array, pick_x: Array, pick_weak: Array, pick_strong: Array, *, seed: int = 0
) -> list[FittedHead]:
    """Fit every head kind; each is scored by APGR on held-out selection rows, best first."""
    sk = _sklearn()
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    scaled = (train_x - mean) / std
    fitted = []
    for c in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1, 1.0):
        model = sk.linear_model.LogisticRegression(C=c, max_iter=2000)
        model.fit(scaled, train_y)
        weight = (model.coef_.T / std[:, None]).astype(np.float64)
        bias = model.intercept_ - (mean / std) @ model.coef_.T
        fitted.append(FittedHead(f"logistic(C={c})", [(weight, bias)], 0.0))
    for alpha in (1e-3, 1e-2):
        mlp = sk.neural_network.MLPClassifier(
            hidden_layer_sizes=(64,), alpha=alpha, early_stopping=True, max_iter=300, random_state=seed
        )
        mlp.fit(scaled, train_y)
        first_w = mlp.coefs_[0] / std[:, None]
        first_b = mlp.intercepts_[0] - (mean / std) @ mlp.coefs_[0]
        fitted.append(
            FittedHead(f"mlp(64, alpha={alpha})", [(first_w, first_b), (mlp.coefs_[1], mlp.intercepts_[1])], 0.0)
        )
    for head in fitted:
        head.selection_apgr = evaluate_router(head.predict(pick_x), pick_weak, pick_strong).apgr
    del scaled
    return sorted(fitted, key=lambda h: -h.selection_apgr)


def write_onnx(head: FittedHead, path: Path, *, encoder: str, training: dict[str, Any]) -> None:
    """Write ``head`` as ONNX: input ``embedding`` [N, dims] -> output ``p_worse`` [N, 1]."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise SystemExit("writing the head needs onnx: pip install 'hybrid-router[build]'") from exc
    dims = head.layers[0][0].shape[0]
    nodes, inits = [], []
    current = "embedding"
    for index, (weight, bias) in enumerate(head.layers):
        w, b = f"w{index}", f"b{index}"
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), w),
            numpy_helper.from_array(bias.astype(np.float32), b),
        ]
        nodes += [
            helper.make_node("MatMul", [current, w], [f"mm{index}"]),
            helper.make_node("Add", [f"mm{index}", b], [f"z{index}"]),
        ]
        current = f"z{index}"
        if index < len(head.layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{index}"]))
            current = f"h{index}"
    nodes.append(helper.make_node("Sigmoid", [current], ["p_worse"]))
    graph = helper.make_graph(
        nodes,
        "difficulty_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dims])],
        [helper.make_tensor_value_info("p_worse", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hybrid-router")
    model.ir_version = 8
    helper.set_model_props(model, {"encoder": encoder, "kind": head.kind, "training": json.dumps(training)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
