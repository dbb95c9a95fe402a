"""Figures of a served artifact on labelled data (through the router)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from router import Router


def evaluate(router: Router, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """coverage, agreement on handled inputs, and more, as served."""
    texts = [t for t, _ in pairs]
    gold = np.array([lab for _, lab in pairs], dtype=object)
    decisions = router.predict_batch(texts)
    return summarize(
        np.array([d.label for d in decisions], dtype=object),
        np.array([d.decision == "handled" for d in decisions], dtype=bool),
        np.array([d.ood for d in decisions], dtype=bool),
        gold,
    )


def summarize(
    pred: np.ndarray, handled: np.ndarray, ood: np.ndarray, gold: np.ndarray
) -> dict[str, Any]:
    n = len(gold)
    correct = pred == gold
    n_handled = int(handled.sum())
    return {
        "n": n,
        "handled": n_handled,
        "coverage": n_handled / n if n else 0.0,
        "agreement_handled": float(correct[handled].mean()) if n_handled else None,
        "agreement_overall": float(correct.mean()) if n else None,
        "ood_deferred": int(ood.sum()),
        "ood_share": float(ood.mean()) if n else 0.0,
    }
