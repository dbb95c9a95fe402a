"""Figures of a served artifact on labelled data (through the router)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from router import Router
from router.traces import Trace
from training.answers import agreement_mask


def evaluate(router: Router, data: Sequence[Trace] | Sequence[tuple[str, str]]) -> dict[str, Any]:
    """coverage, agreement on handled inputs, and more, as served.

    Agreement is of the answer the router renders (the teacher's canonical answer for
    the predicted label) with the labelled answer: its `raw_output` when the data has
    one, else its label.
    """
    traces = [t if isinstance(t, Trace) else Trace(t[0], t[1]) for t in data]
    decisions = router.predict_batch([t.input for t in traces])
    manifest = router.manifest
    answers = manifest.answers or {label: label for label in router.labels}
    agrees = agreement_mask([d.label for d in decisions], traces, answers, manifest.output_format)
    return summarize(
        agrees,
        np.array([d.decision == "handled" for d in decisions], dtype=bool),
        np.array([d.ood for d in decisions], dtype=bool),
    )


def summarize(agrees: np.ndarray, handled: np.ndarray, ood: np.ndarray) -> dict[str, Any]:
    n = len(agrees)
    n_handled = int(handled.sum())
    return {
        "n": n,
        "handled": n_handled,
        "coverage": n_handled / n if n else 0.0,
        "agreement_handled": float(agrees[handled].mean()) if n_handled else None,
        "agreement_overall": float(agrees.mean()) if n else None,
        "ood_deferred": int(ood.sum()),
        "ood_share": float(ood.mean()) if n else 0.0,
    }
