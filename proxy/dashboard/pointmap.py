"""The partition map: held-out inputs and live requests on one plane.

The plane must place a live request where the served version sees it, next to the
held-out inputs it resembles. The version's own clusters give the coordinates: each
input is embedded by the served router, and described by its similarity to every
cluster centroid (`clusters.onnx`: the same Gather and MatMul that name a request's
cluster when serving). A 2-D PCA fitted once on the held-out inputs' similarity
vectors then projects held-out and live inputs alike, so a live point lands among
the held-out points of its region. Each cluster draws a ray out of one hub: the point
of an input similar to no centroid, where out-of-distribution requests gather.

Everything here blocks (ONNX, numpy): callers run it in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from router import Router

HELDOUT_FILE = "heldout.jsonl"
MAX_HELDOUT = 1500  # held-out points drawn: enough to show the regions, light to send
EMBED_CHUNK = 64  # TF-IDF features are dense and wide (~50k floats a row): embed a few at once
TEXT_CHARS = 120  # input text kept per point, for its tooltip


class MapUnavailable(Exception):
    """Why a version gets no map (no clusters, no held-out inputs); shown on the page."""


@dataclass(frozen=True)
class Projection:
    """One version's plane: its centroids, and the PCA fitted on its held-out inputs."""

    version: str
    columns: np.ndarray  # [M] int64: the embedding columns the centroids keep
    centroids_t: np.ndarray  # [M, K] float32
    mean: np.ndarray  # [K]
    axes: np.ndarray  # [K, 2]
    heldout: list[dict[str, Any]]
    centres: list[dict[str, Any]]

    @property
    def origin(self) -> dict[str, float]:
        """Where an input like no cluster (similarity 0 to each) lands: the hub every
        cluster's ray starts from."""
        x, y = (-self.mean @ self.axes).tolist()
        return {"x": round(float(x), 5), "y": round(float(y), 5)}

    def project(self, router: Router, texts: Sequence[str]) -> np.ndarray:
        """[N, 2] coordinates of inputs on this plane."""
        sims = similarities(router, self.columns, self.centroids_t, texts)
        return np.asarray((sims - self.mean) @ self.axes, dtype=np.float64)


def read_centroids(router: Router) -> tuple[np.ndarray, np.ndarray]:
    """(columns, centroids_t) from the version's `clusters.onnx` initializers."""
    scoring = router.manifest.scoring
    if scoring is None or scoring.cluster_file is None:
        raise MapUnavailable("this version ships no clusters, so it has no map")
    model = onnx.load(str(router.directory / scoring.cluster_file))
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if "columns" not in found or "centroids_t" not in found:
        raise MapUnavailable("the version's clusters.onnx has no centroids")
    return found["columns"].astype(np.int64), found["centroids_t"].astype(np.float32)


def similarities(
    router: Router, columns: np.ndarray, centroids_t: np.ndarray, texts: Sequence[str]
) -> np.ndarray:
    """[N, K]: each unit-length embedding's dot product with each centroid."""
    blocks = [np.zeros((0, centroids_t.shape[1]), dtype=np.float32)]
    for i in range(0, len(texts), EMBED_CHUNK):
        feats = router.pipeline.embed(list(texts[i : i + EMBED_CHUNK]))
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        kept = feats[:, columns] / np.where(norms > 0, norms, 1.0)
        blocks.append(kept @ centroids_t)
    return np.vstack(blocks)


def pca_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, [D, 2] axes) of a 2-D PCA; signs fixed so a refit draws alike."""
    mean = x.mean(axis=0)
    axes = np.zeros((x.shape[1], 2))
    if len(x) >= 2:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        top = vt[:2].T
        for j in range(top.shape[1]):
            if top[np.argmax(np.abs(top[:, j])), j] < 0:
                top[:, j] = -top[:, j]
        axes[:, : top.shape[1]] = top
    return mean, axes


def read_heldout(directory: Path, limit: int = MAX_HELDOUT) -> list[tuple[str, str]]:
    """(input, label) of the version's held-out test split (any split if it has none),
    a fixed sample of at most `limit`."""
    path = directory / HELDOUT_FILE
    if not path.is_file():
        raise MapUnavailable("this version kept no held-out inputs (heldout.jsonl)")
    by_split: dict[str, list[tuple[str, str]]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pair = (str(row["input"]), str(row.get("label")))
            by_split.setdefault(str(row.get("split", "test")), []).append(pair)
    rows = by_split.get("test") or [p for split in by_split.values() for p in split]
    if len(rows) > limit:
        picked = np.random.default_rng(0).choice(len(rows), limit, replace=False)
        rows = [rows[i] for i in sorted(picked)]
    return rows


def build_projection(router: Router, version: str) -> Projection:
    """A version's plane, with its held-out points placed and labelled."""
    columns, centroids_t = read_centroids(router)
    rows = read_heldout(router.directory)
    if len(rows) < 3:
        raise MapUnavailable("too few held-out inputs to draw a map")
    texts = [text for text, _ in rows]
    sims = similarities(router, columns, centroids_t, texts)
    mean, axes = pca_axes(sims)
    xy = (sims - mean) @ axes
    scores = router.score(texts)
    handled = (~scores.ood) & (scores.accept_score >= router.threshold)
    heldout = [
        {
            "x": round(float(xy[i, 0]), 5),
            "y": round(float(xy[i, 1]), 5),
            "decision": "handled" if handled[i] else "deferred",
            "ood": bool(scores.ood[i]),
            "cluster": int(scores.cluster[i]),
            "label": label,
            "input": texts[i][:TEXT_CHARS],
        }
        for i, (_, label) in enumerate(rows)
    ]
    names = router.pipeline.cluster_names
    centres = []
    for c in sorted({int(v) for v in scores.cluster if v >= 0}):
        members = xy[scores.cluster == c]
        centres.append(
            {
                "id": c,
                "name": names[c] if c < len(names) else f"cluster {c}",
                "x": round(float(members[:, 0].mean()), 5),
                "y": round(float(members[:, 1].mean()), 5),
                "size": len(members),
            }
        )
    return Projection(version, columns, centroids_t, mean, axes, heldout, centres)
