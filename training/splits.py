"""Disjoint, stratified, seeded splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def stratified_split(
    labels: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Assign every index to exactly one named split, per class in proportion.

    Within each class the members are shuffled and laid on [0, 1) with a
    random offset, then cut at the cumulative fractions: every class gets its
    share up to one example, tiny classes land in a random split rather than
    always in the first, and the result depends only on (labels, seed).
    """
    names = list(fractions)
    fr = np.array([float(fractions[n]) for n in names])
    if (fr < 0).any() or fr.sum() <= 0:
        raise ValueError("split fractions must be non-negative and not all zero")
    cuts = np.cumsum(fr / fr.sum())
    cuts[-1] = 1.0 + 1e-9
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels, dtype=object)
    assign = np.empty(len(labels_arr), dtype=np.int64)
    for cls in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == cls)
        idx = idx[rng.permutation(len(idx))]
        pos = (np.arange(len(idx)) + rng.random()) / len(idx)
        assign[idx] = np.searchsorted(cuts, pos, side="right")
    return {name: np.flatnonzero(assign == i) for i, name in enumerate(names)}
