"""Two more candidates: nearest neighbours, and the average of the smooth candidates.

Why an average: which inputs a surrogate may answer is decided by how well its
confidence ranks them, and models that err differently rank better together. On
Banking77 and CLINC150 with the MiniLM encoder (4,000 traces, six shuffles each),
the average of the linear SVM, logistic regression, MLP and nearest neighbours
certified 0.838 and 0.918 of fresh inputs at alpha 0.95, against 0.809 and 0.911 for
the best single model (docs/benchmarks.md, "Trainer quality"). Selection still
chooses on validation: the average serves only where it wins there.

Why nearest neighbours: traffic repeats itself, and an input close to a trace the
teacher labelled is the surest case there is; a linear head smooths that away. The
references are capped (`max_references`) so that a request costs one product with
at most that many rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from training.candidates import Candidate, Matrix, Reducer
from training.onnx_graph import average_heads, build_head, neighbour_vote_graph

SMOOTH = ("linear_svm", "logreg", "mlp", "knn")  # candidates whose probabilities average well


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


@dataclass
class NearestNeighbours(Candidate):
    """A vote of the `k` most similar references (cosine), weighted by
    exp(temperature * (similarity - the best similarity))."""

    name: str = "knn"
    k: int = 10
    temperature: float = 20.0
    max_references: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        self.params = {"k": self.k, "temperature": self.temperature}

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> NearestNeighbours:
        self.n_classes = n_classes
        self.uses_reducer = not reducer.identity
        rows = np.arange(len(y))
        if len(rows) > self.max_references:
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(rows, self.max_references, replace=False))
        self.references_ = _unit_rows(reducer.transform(x[rows]))
        self.labels_ = np.asarray(y)[rows]
        self.params["references"] = len(rows)
        return self

    def _votes(self, x: Matrix, reducer: Reducer, temperature: float) -> np.ndarray:
        sims = _unit_rows(reducer.transform(x)) @ self.references_.T
        k = min(self.k, sims.shape[1])
        # the k largest, best first, as TopK gives them in the graph
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(sims, top, axis=1)
        weights = np.exp(temperature * (best - best[:, :1]))
        votes = np.zeros((sims.shape[0], self.n_classes), dtype=np.float32)
        rows = np.repeat(np.arange(sims.shape[0]), k)
        np.add.at(votes, (rows, self.labels_[top].ravel()), weights.ravel())
        return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        return self._votes(x, reducer, self.temperature)

    def tune(self, x_val: Matrix, y_val: np.ndarray, reducer: Reducer) -> None:
        """The temperature with the least log loss on validation."""
        best = (np.inf, self.temperature)
        for t in (5.0, 10.0, 20.0, 40.0, 80.0):
            p = self._votes(x_val, reducer, t)[np.arange(len(y_val)), y_val]
            nll = float(-np.log(np.clip(p, 1e-6, None)).mean())
            best = min(best, (nll, t))
        self.temperature = best[1]
        self.params["temperature"] = self.temperature

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        vote = neighbour_vote_graph(
            self.references_, self.labels_, self.n_classes, self.k, self.temperature
        )
        return build_head(
            dim,
            self.n_classes,
            reducer.projection(),
            sub_model=vote,
            centroids=centroids,
            ood_block=ood_block,
        )


@dataclass
class Ensemble(Candidate):
    """The mean of its members' probabilities."""

    name: str = "ensemble"
    members: list[Candidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = {"members": [m.name for m in self.members]}
        self.uses_reducer = any(m.uses_reducer for m in self.members)

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> Ensemble:
        self.n_classes = n_classes
        for m in self.members:
            m.fit(x, y, n_classes, reducer)
        self.uses_reducer = any(m.uses_reducer for m in self.members)
        return self

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        return mean_proba([m.predict_proba(x, reducer) for m in self.members])

    def tune(self, x_val: Matrix, y_val: np.ndarray, reducer: Reducer) -> None:
        for m in self.members:
            m.tune(x_val, y_val, reducer)

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        # The first member carries the out-of-distribution similarity for all.
        heads = [
            m.to_onnx(dim, reducer, centroids if i == 0 else None, ood_block)
            for i, m in enumerate(self.members)
        ]
        return average_heads(heads)


def mean_proba(probs: list[np.ndarray]) -> np.ndarray:
    return (np.sum(probs, axis=0) / np.float32(len(probs))).astype(np.float32)


def ensemble_of(fitted: list[Candidate]) -> Ensemble | None:
    """The average of the fitted smooth candidates, when there are two or more."""
    members: list[Any] = [c for c in fitted if c.name in SMOOTH]
    return Ensemble(members=members) if len(members) >= 2 else None
