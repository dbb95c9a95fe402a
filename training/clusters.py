"""Clusters of a task's inputs, fitted on held-out traces and shipped with the model.

The router names each decision's cluster, so the decisions table and /v1/classify
say which region of the input space an answer came from, and the report describes
the same regions. Clustering runs on an SVD projection of the unit-length
embeddings (k-means with the k of best silhouette); the shipped centroids live in
the embedding space, restricted to their heaviest columns, and a served input goes
to the centroid of highest dot product: a Gather, a small MatMul and an ArgMax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import normalize

OPSET = 13


@dataclass(frozen=True)
class Clusters:
    columns: np.ndarray  # [M] int64: the embedding columns the centroids keep
    centroids: np.ndarray  # [K, M] float32
    names: list[str]
    silhouette: float | None

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, feats: Any) -> np.ndarray:
        """The cluster of each row, exactly as the exported graph computes it."""
        kept = feats[:, self.columns]
        kept = kept.toarray() if sp.issparse(kept) else np.asarray(kept)
        return (kept.astype(np.float32) @ self.centroids.T).argmax(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def kmeans_by_silhouette(
    z: np.ndarray, seed: int = 0, max_k: int = 40, per_cluster: int = 20, tries: int = 6
) -> tuple[np.ndarray, float | None]:
    """K-means on unit rows, with the k of best silhouette among `tries` candidates.

    k runs from 2 to `max_k`, and to one cluster per `per_cluster` rows at most.
    Returns each row's cluster and the silhouette (None when nothing could be split).
    """
    n = len(z)
    top = max(2, min(max_k, n // per_cluster))
    candidates = sorted({int(k) for k in np.linspace(2, top, num=min(tries, top - 1))})
    best: tuple[float, np.ndarray] | None = None
    for k in candidates if n >= 8 else []:
        assign = KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(z)
        if len(set(assign)) < 2:
            continue
        score = float(silhouette_score(z, assign, sample_size=min(n, 1000), random_state=seed))
        if best is None or score > best[0]:
            best = (score, assign)
    if best is None:
        return np.zeros(n, dtype=int), None
    return best[1], best[0]


def fit_clusters(
    feats: Any,
    labels: Sequence[str],
    seed: int = 0,
    max_k: int = 40,
    max_columns: int = 2048,
) -> Clusters:
    """K-means over held-out embeddings; k chosen by silhouette among a few candidates.

    ``feats`` may be sparse (TF-IDF). Each centroid keeps only its heaviest columns,
    at most ``max_columns`` in all, so serving pays a small MatMul, not one over
    every n-gram.
    """
    x = normalize(sp.csr_matrix(feats) if sp.issparse(feats) else np.asarray(feats, np.float64))
    n = x.shape[0]
    dims = max(2, min(50, x.shape[1] - 1, n - 1))
    z = _unit(TruncatedSVD(n_components=dims, random_state=seed).fit_transform(x))
    assign, silhouette = kmeans_by_silhouette(z, seed, max_k)
    ids = sorted(set(assign.tolist()))
    full = _unit(np.vstack([np.asarray(x[assign == c].mean(axis=0)).ravel() for c in ids]))
    per_centroid = max(1, max_columns // len(ids))
    top = np.argsort(-np.abs(full), axis=1)[:, :per_centroid]
    columns = np.unique(top.ravel()).astype(np.int64)
    clusters = Clusters(columns, full[:, columns].astype(np.float32), [], None)
    # Name each cluster by what the router will assign to it, not by k-means' own split.
    served = clusters.assign(x)
    names = [
        cluster_name([labels[int(i)] for i in np.flatnonzero(served == c)]) for c in range(len(ids))
    ]
    return Clusters(columns, clusters.centroids, names, silhouette)


def cluster_name(members: Sequence[str], shown: int = 2, share: float = 0.15) -> str:
    """A cluster named by its contents: its top labels, and how many others it holds.

    The most frequent label always, the next ones while they hold at least `share` of
    the members (at most `shown` in all), then "+N" for the other labels present:
    "card_arrival, card_delivery_estimate +3".
    """
    common = Counter(members).most_common()
    if not common:
        return "empty"
    top = [common[0][0]]
    top += [label for label, n in common[1:shown] if n >= share * len(members)]
    rest = len(common) - len(top)
    return ", ".join(top) + (f" +{rest}" if rest else "")


def clusters_onnx(clusters: Clusters, dim: int) -> onnx.ModelProto:
    """features [N, dim] -> cluster [N] (int64): the nearest kept centroid by dot product."""
    columns = numpy_helper.from_array(clusters.columns, name="columns")
    weights = numpy_helper.from_array(clusters.centroids.T.copy(), name="centroids_t")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["features", "columns"], ["kept"], axis=1),
            helper.make_node("MatMul", ["kept", "centroids_t"], ["similarity"]),
            helper.make_node("ArgMax", ["similarity"], ["cluster"], axis=1, keepdims=0),
        ],
        "tracer_clusters",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("cluster", TensorProto.INT64, [None])],
        initializer=[columns, weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
