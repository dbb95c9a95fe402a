"""Clusters of a task's inputs, fitted on held-out traces and shipped with the model.

The router names each decision's cluster, so the decisions table and /v1/classify
say which region of the input space an answer came from, and the report describes
the same regions. Clustering runs on an SVD projection of the unit-length
embeddings (k-means with the k of best silhouette); the shipped centroids live in
the full embedding space, and a served input goes to the centroid of highest
cosine: one MatMul and an ArgMax in ONNX.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import silhouette_score

OPSET = 13


@dataclass(frozen=True)
class Clusters:
    centroids: np.ndarray  # [K, D] float32, unit rows
    names: list[str]
    silhouette: float | None

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(feats, dtype=np.float32) @ self.centroids.T  # scores; argmax = cluster


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def fit_clusters(
    feats: np.ndarray, labels: Sequence[str], seed: int = 0, max_k: int = 40
) -> Clusters:
    """K-means over held-out embeddings; k chosen by silhouette among a few candidates."""
    x = _unit(np.asarray(feats, dtype=np.float64))
    n = len(x)
    dims = max(2, min(50, x.shape[1] - 1, n - 1))
    z = _unit(TruncatedSVD(n_components=dims, random_state=seed).fit_transform(x))
    top = max(2, min(max_k, n // 20))
    candidates = sorted({int(k) for k in np.linspace(2, top, num=min(6, top - 1))})
    best: tuple[float, np.ndarray] | None = None
    for k in candidates if n >= 8 else []:
        assign = KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(z)
        if len(set(assign)) < 2:
            continue
        score = float(silhouette_score(z, assign, sample_size=min(n, 1000), random_state=seed))
        if best is None or score > best[0]:
            best = (score, assign)
    assign = best[1] if best is not None else np.zeros(n, dtype=int)
    ids = sorted(set(assign.tolist()))
    centroids = _unit(np.stack([x[assign == c].mean(axis=0) for c in ids])).astype(np.float32)
    # Name each cluster by what the router will assign to it, not by k-means' own split.
    served = (x.astype(np.float32) @ centroids.T).argmax(axis=1)
    names = []
    for c in range(len(ids)):
        members = [labels[i] for i in np.flatnonzero(served == c)]
        common = Counter(members).most_common(2)
        if not common:
            names.append("empty")
        elif len(common) > 1 and common[1][1] >= 0.3 * len(members):
            names.append(f"{common[0][0]} / {common[1][0]}")
        else:
            names.append(common[0][0])
    return Clusters(centroids, names, best[0] if best is not None else None)


def clusters_onnx(clusters: Clusters) -> onnx.ModelProto:
    """features [N, D] -> cluster [N] (int64): the nearest centroid by cosine."""
    d = clusters.centroids.shape[1]
    weights = numpy_helper.from_array(clusters.centroids.T.copy(), name="centroids_t")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "centroids_t"], ["similarity"]),
            helper.make_node("ArgMax", ["similarity"], ["cluster"], axis=1, keepdims=0),
        ],
        "tracer_clusters",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("cluster", TensorProto.INT64, [None])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
