"""Semantic routes: which operator-defined kind of request this is, by embedding similarity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from router.features import RouteMatch

__all__ = ["Embedder", "RouteMatch", "SemanticRoutes"]

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors (one row per text)."""

    name: str
    dims: int
    # True when embedding a short text costs well under a millisecond, so the
    # classifier may run it on the event loop instead of paying a thread hop.
    cheap: bool

    def embed(self, texts: Sequence[str]) -> Any: ...


class SemanticRoutes:
    """Routes as example embeddings; a request's score for a route is its best example's cosine.

    >>> import numpy as np
    >>> class Toy:
    ...     name, dims = "toy", 2
    ...     def embed(self, texts):
    ...         return np.array([[1.0, 0.0] if "code" in t else [0.0, 1.0] for t in texts], dtype=np.float32)
    >>> routes = SemanticRoutes(Toy(), [("coding", ["fix my code"], 0.8)])
    >>> routes.match(Toy().embed(["more code"])[0]).route, routes.match(Toy().embed(["hello"])[0]).route
    ('coding', None)
    """

    def __init__(self, embedder: Embedder, routes: Sequence[tuple[str, Sequence[str], float]]) -> None:
        self.names = [name for name, _, _ in routes]
        self.thresholds = {name: threshold for name, _, threshold in routes}
        owners: list[int] = []
        texts: list[str] = []
        for index, (_, examples, _) in enumerate(routes):
            owners += [index] * len(examples)
            texts += list(examples)
        self._owners = np.array(owners)
        self._examples: Vector = embedder.embed(texts) if texts else np.zeros((0, embedder.dims), np.float32)

    def __bool__(self) -> bool:
        return bool(self.names)

    def match(self, vector: Vector) -> RouteMatch:
        similarities = self._examples @ vector
        best_example = int(np.argmax(similarities))
        score = float(similarities[best_example])
        best = self.names[int(self._owners[best_example])]
        return RouteMatch(best if score >= self.thresholds[best] else None, score, best)
