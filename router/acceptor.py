"""Acceptor features: how likely the surrogate is to agree with the teacher.

The same functions run at training time (to choose and calibrate) and at
serving time, so the scores that set the threshold are the scores served.
"""

from __future__ import annotations

import numpy as np

#: Column order of the learned acceptor's input.
ACCEPTOR_FEATURES: tuple[str, ...] = ("max_prob", "margin", "entropy", "ood_similarity")


def acceptor_features(probs: np.ndarray, ood_similarity: np.ndarray) -> np.ndarray:
    """[N, K] class probabilities and [N] similarities -> [N, 4] float32 features."""
    probs = np.asarray(probs, dtype=np.float32)
    n, k = probs.shape
    if k >= 2:
        top2 = np.partition(probs, k - 2, axis=1)[:, k - 2 :]
        p1 = top2.max(axis=1)
        p2 = top2.min(axis=1)
    else:
        p1 = probs[:, 0]
        p2 = np.zeros(n, dtype=np.float32)
    clipped = np.clip(probs, 1e-12, 1.0)
    entropy = -(clipped * np.log(clipped)).sum(axis=1) / max(np.log(max(k, 2)), 1e-12)
    feats = np.empty((n, 4), dtype=np.float32)
    feats[:, 0] = p1
    feats[:, 1] = p1 - p2
    feats[:, 2] = entropy
    feats[:, 3] = np.asarray(ood_similarity, dtype=np.float32).reshape(n)
    return feats


def simple_score(kind: str, features: np.ndarray) -> np.ndarray:
    """Score of a non-learned acceptor from `acceptor_features` output."""
    if kind == "max_prob":
        return features[:, 0].astype(np.float64)
    if kind == "margin":
        return features[:, 1].astype(np.float64)
    raise ValueError(f"unknown acceptor kind {kind!r}")
