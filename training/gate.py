"""The parity gate: the threshold certified on calibration, the refusal when none is,
and the held-out figures that are only reported.

Agreement here is agreement of the answer the router would render (the teacher's
canonical answer for the predicted label) with the answer the teacher gave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.pipeline import Pipeline
from router.settings import FitOptions
from training.answers import agreement_mask
from training.bound import Calibration, calibrate, min_testable, start_count_for
from training.clusters import clusters_onnx, fit_clusters
from training.embedders import embed
from training.evaluate import summarize
from training.progress import Progress
from training.report import save_heldout
from training.stages import Features, Refusal, Splits

LOW_SHARE = 0.05  # calibration's least sure share of inputs, watched live for a shift

__all__ = ["calibrate_threshold", "gate", "heldout_clusters", "min_testable", "report_test"]


def _agreement(
    pipe: Pipeline, scores_index: np.ndarray, splits: Splits, split: str,
    answers: dict[str, str], opts: FitOptions,
) -> np.ndarray:  # fmt: skip
    predicted = [pipe.labels[i] for i in scores_index]
    traces = splits.traces_of(split)
    if opts.kind == "tools":  # the name: whole calls are certified apart (training/tools.py)
        return np.array([p == t.label for p, t in zip(predicted, traces, strict=True)], bool)
    return agreement_mask(predicted, traces, answers, opts.output_format)


def calibrate_threshold(
    pipe: Pipeline,
    splits: Splits,
    answers: dict[str, str],
    validation_coverage: float,
    alpha: float,
    delta: float,
    opts: FitOptions,
    manifest: dict[str, Any],
    progress: Progress,
) -> Calibration:
    """Score calibration through the router and run the fixed-sequence test."""
    with progress.stage("calibrate threshold (through the router)"):
        s = pipe.score(splits.texts_of("calibration", raw=True))
        correct = _agreement(pipe, s.label_index, splits, "calibration", answers, opts)
        scores = np.where(s.ood, -np.inf, s.accept_score)
        # Start where validation (independent of calibration) says coverage is
        # reachable: half of it (certified or empirical), at least half the minimum.
        start = start_count_for(len(scores), max(opts.min_coverage, validation_coverage))
        cal = calibrate(scores, correct, alpha, delta, start_count=start)
        manifest["calibration_start_count"] = start
        manifest["calibration"] = {**cal.as_dict(), **unusual_inputs(s.accept_score, s.ood)}
        progress.log(
            f"threshold {cal.threshold}, coverage {cal.coverage:.3f}, agreement {cal.agreement}"
        )
    return cal


def unusual_inputs(accept_score: np.ndarray, ood: np.ndarray) -> dict[str, float | None]:
    """What the live shift check compares today's traffic with: the share of calibration
    inputs that were out of distribution, and of those that were out of distribution or
    scored below `low_accept`, the accept score of the least sure `LOW_SHARE` of the rest.
    A jump in that share means inputs the model is unsure of, even when they are not far
    from its classes: new kinds of input."""
    inside = accept_score[~ood]
    low = float(np.quantile(inside, LOW_SHARE, method="lower")) if len(inside) else None
    unusual = ood | (accept_score < low) if low is not None else ood
    return {
        "ood_share": float(ood.mean()) if len(ood) else 0.0,
        "low_accept": low,
        "unusual_share": float(unusual.mean()) if len(ood) else 0.0,
    }


def gate(cal: Calibration, opts: FitOptions) -> None:
    """Refuse, saying why, unless a threshold certifies alpha at a useful coverage."""
    promise = f"agreement >= {opts.target}" + (
        f" on the next {opts.horizon} handled inputs" if opts.horizon > 0 else ""
    )
    figures = {
        "best_certified_coverage": cal.coverage,
        "best_certified_agreement": cal.agreement,
        "best_certified_lower_bound": cal.lower_bound,
        "best_empirical_coverage": cal.best_empirical_coverage,
        "best_empirical_agreement": cal.best_empirical_agreement,
        "overall_agreement": cal.overall_agreement,
        "n_calibration": cal.n,
    }
    if cal.threshold is None:
        raise Refusal(
            "no_threshold",
            f"no threshold certifies {promise} at confidence {1 - opts.delta:.4g} on "
            f"{cal.n} calibration traces (overall agreement {cal.overall_agreement:.3f}; "
            f"best empirical coverage at alpha {cal.best_empirical_coverage:.3f})",
            **figures,
        )
    if cal.coverage < opts.min_coverage:
        raise Refusal(
            "coverage_below_minimum",
            f"certified coverage {cal.coverage:.3f} at {promise} is below "
            f"the minimum {opts.min_coverage}",
            **figures,
        )


def report_test(
    pipe: Pipeline,
    splits: Splits,
    answers: dict[str, str],
    threshold: float,
    opts: FitOptions,
    manifest: dict[str, Any],
    progress: Progress,
) -> None:
    """The test split's figures, never used to choose anything."""
    with progress.stage("report test split"):
        if not len(splits.index["test"]):
            manifest["test"] = {"n": 0, "note": "test_size=0: no held-out split in this fit"}
            return
        s = pipe.score(splits.texts_of("test", raw=True))
        handled = (~s.ood) & (s.accept_score >= threshold)
        agrees = _agreement(pipe, s.label_index, splits, "test", answers, opts)
        manifest["test"] = summarize(agrees, handled, s.ood)


def heldout_clusters(
    feats: Features,
    splits: Splits,
    tmp: Path,
    opts: FitOptions,
    manifest: dict[str, Any],
    progress: Progress,
) -> None:
    """Regions of the input space, fitted on held-out traces, shipped with the model."""
    with progress.stage("clusters (held-out traces)"):
        held = np.concatenate([splits.index["calibration"], splits.index["test"]])
        clusters = fit_clusters(
            embed(feats.parts, [splits.texts[i] for i in held]),
            [splits.y_str[i] for i in held],
            opts.seed,
        )
        (tmp / "clusters.onnx").write_bytes(clusters_onnx(clusters, feats.dim).SerializeToString())
        manifest["clusters"] = {
            "file": "clusters.onnx",
            "k": clusters.k,
            "names": clusters.names,
            "silhouette": clusters.silhouette,
            "fitted_on": f"{len(held)} held-out traces (calibration and test splits)",
        }
        save_heldout(tmp, {split: splits.traces_of(split) for split in ("calibration", "test")})
        progress.log(f"{clusters.k} clusters, silhouette {clusters.silhouette}")
