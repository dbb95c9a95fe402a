"""Choosing the surrogate: every candidate and acceptor judged on validation, the winner
refitted, exported to ONNX, and checked against scikit-learn.

The choice is made by the coverage at which each (candidate, acceptor) pair's
lower bound reaches alpha on the validation split, which the threshold never sees
(`training.bound.bounded_coverage`: a choice, not a certificate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp

from router.acceptor import ACCEPTOR_FEATURES, acceptor_features, simple_score
from router.manifest import Scoring
from router.pipeline import Pipeline
from router.settings import FitOptions
from training.acceptors import cross_fit_scores, fit_learned, learned_to_onnx
from training.bound import bounded_coverage, calibrate
from training.candidates import MLP, Candidate, LinearSVM, LogReg, Reducer, Trees
from training.embedders import EncoderEmbedder, TfidfEmbedder, embed
from training.ensemble import SMOOTH, NearestNeighbours, ensemble_of, mean_proba
from training.progress import Progress
from training.stages import Features, Splits


def centroids(x: Any, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit-norm class centroids of unit-normalised rows."""
    if sp.issparse(x):
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
        xn = sp.diags(1.0 / np.clip(norms, 1e-12, None)) @ x
        onehot = sp.csr_matrix((np.ones(len(y)), (y, np.arange(len(y)))), shape=(n_classes, len(y)))
        c = np.asarray((onehot @ xn).todense())
    else:
        xn = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
        c = np.zeros((n_classes, x.shape[1]))
        np.add.at(c, y, xn)
    c /= np.clip(np.linalg.norm(c, axis=1, keepdims=True), 1e-12, None)
    return c.astype(np.float32)


def similarity(x: Any, cents: np.ndarray) -> np.ndarray:
    dots = np.asarray(x @ cents.T)
    if sp.issparse(x):
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    else:
        norms = np.linalg.norm(x, axis=1)
    return (dots / np.clip(norms, 1e-12, None)[:, None]).max(axis=1)


CANDIDATES = ("linear_svm", "logreg", "mlp", "extra_trees", "knn", "ensemble")


def default_candidates(names: list[str] | None, seed: int) -> list[Candidate]:
    """The candidates to fit, by name (None: all); "ensemble" is judged after them, from
    the fitted ones (`training.ensemble`), so it is not in this list."""
    wanted = list(CANDIDATES) if names is None else names
    unknown = set(wanted) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    made: dict[str, Candidate] = {
        "linear_svm": LinearSVM(),
        "logreg": LogReg(),
        "mlp": MLP(seed=seed),
        "extra_trees": Trees(seed=seed),
        "knn": NearestNeighbours(seed=seed),
    }
    chosen = [made[n] for n in wanted if n in made]
    if "ensemble" in wanted and sum(c.name in SMOOTH for c in chosen) < 2:
        raise ValueError(f"an ensemble needs two or more of {', '.join(SMOOTH)} listed with it")
    return chosen


@dataclass
class Selection:
    winner: Candidate
    acceptor: str
    reducer: Reducer
    rows: list[dict[str, Any]]  # every pair's figures on validation
    val_features: np.ndarray
    ood_min: float | None
    # The winner's labels (class indices) and accept scores on validation, from its fit
    # on the fit split alone (-inf: out of distribution): an honest look at validation.
    val_labels: np.ndarray
    val_scores: np.ndarray

    def validation_coverage(self) -> float:
        """The chosen pair's coverage at alpha on validation (bounded or empirical)."""
        chosen = (self.winner.name, self.acceptor)
        return max(
            max(r["coverage"], r["best_empirical_coverage"])
            for r in self.rows
            if (r["candidate"], r["acceptor"]) == chosen
        )


def select(
    feats: Features, opts: FitOptions, alpha: float, delta: float, progress: Progress
) -> Selection:
    k = len(feats.labels)
    reducer = Reducer(feats.dim, opts.svd_components, opts.seed)
    names = list(opts.candidates) if opts.candidates else None
    candidates = default_candidates(names, opts.seed)
    wants_ensemble = names is None or "ensemble" in names
    if any(c.name != "linear_svm" for c in candidates) and not reducer.identity:
        with progress.stage("reduce (TruncatedSVD)"):
            reducer.fit(feats.x_fit)
    cents = centroids(feats.block(feats.x_fit), feats.y_fit, k)
    sim_val = similarity(feats.block(feats.x_val), cents)
    ood_min = float(np.quantile(sim_val, opts.ood_quantile)) if opts.ood_quantile > 0 else None
    ood_val = sim_val < ood_min if ood_min is not None else np.zeros(len(feats.y_val), bool)
    rows: list[dict[str, Any]] = []
    Best = tuple[tuple[float, float, float], Candidate, str, np.ndarray, np.ndarray, np.ndarray]
    best: Best | None = None

    def judge(cand: Candidate, probs: np.ndarray, secs: float) -> None:
        nonlocal best
        correct = probs.argmax(axis=1) == feats.y_val
        val_feats = acceptor_features(probs, sim_val)
        for acc in opts.acceptors:
            if acc == "learned":
                score = cross_fit_scores(val_feats, correct, opts.seed)
            else:
                score = simple_score(acc, val_feats)
            score = np.where(ood_val, -np.inf, score)
            cal = calibrate(score, correct, alpha, delta)  # for its empirical figures
            coverage, agreement = bounded_coverage(score, correct, alpha, delta)
            rows.append(
                {
                    "candidate": cand.name,
                    "acceptor": acc,
                    "params": cand.params,
                    "accuracy": float(correct.mean()),
                    "coverage": coverage,
                    "agreement": agreement,
                    "best_empirical_coverage": cal.best_empirical_coverage,
                    "fit_seconds": secs,
                }
            )
            key = (coverage, cal.best_empirical_coverage, float(correct.mean()))
            if best is None or key > best[0]:
                best = (key, cand, acc, val_feats, probs.argmax(axis=1), score)
        progress.log(f"  {cand.name}: accuracy {correct.mean():.3f} ({secs:.1f}s)")

    fitted: list[tuple[Candidate, np.ndarray, float]] = []
    with progress.stage("candidates"):
        for cand in candidates:
            t0 = time.perf_counter()
            cand.fit(feats.x_fit, feats.y_fit, k, reducer)
            cand.tune(feats.x_val, feats.y_val, reducer)
            probs = cand.predict_proba(feats.x_val, reducer)
            fitted.append((cand, probs, time.perf_counter() - t0))
            judge(*fitted[-1])
        ensemble = ensemble_of([c for c, _, _ in fitted]) if wants_ensemble else None
        if ensemble is not None:
            parts = [(p, s) for c, p, s in fitted if c.name in ensemble.params["members"]]
            judge(ensemble, mean_proba([p for p, _ in parts]), sum(s for _, s in parts))
    assert best is not None
    progress.candidates(rows, alpha)
    _, winner, acceptor, val_feats, val_labels, val_scores = best
    return Selection(winner, acceptor, reducer, rows, val_feats, ood_min, val_labels, val_scores)


def _write_onnx(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def export(
    sel: Selection,
    feats: Features,
    opts: FitOptions,
    tmp: Path,
    manifest: dict[str, Any],
    progress: Progress,
) -> None:
    """Refit the winner on fit + validation and write its ONNX stages and manifest sections."""
    winner, k = sel.winner, len(feats.labels)
    manifest["selection"] = {
        "metric": "coverage certified at alpha on the validation split",
        "candidates": [{**r, "fit_seconds": round(r["fit_seconds"], 3)} for r in sel.rows],
        "chosen": {"candidate": winner.name, "acceptor": sel.acceptor, "params": winner.params},
    }
    val_correct = winner.predict_proba(feats.x_val, sel.reducer).argmax(axis=1) == feats.y_val
    learned = fit_learned(sel.val_features, val_correct) if sel.acceptor == "learned" else None
    acceptor = "max_prob" if sel.acceptor == "learned" and learned is None else sel.acceptor
    cents = centroids(feats.block(feats.x_fit), feats.y_fit, k)
    with progress.stage(f"refit {winner.name} on fit + validation" if opts.refit else "export"):
        y_train = feats.y_fit
        if opts.refit:
            x_train = (
                sp.vstack([feats.x_fit, feats.x_val], format="csr")
                if sp.issparse(feats.x_fit)
                else np.vstack([feats.x_fit, feats.x_val])
            )
            y_train = np.concatenate([feats.y_fit, feats.y_val])
            if winner.uses_reducer and not sel.reducer.identity:
                sel.reducer = Reducer(feats.dim, opts.svd_components, opts.seed).fit(x_train)
            winner.fit(x_train, y_train, k, sel.reducer)
            cents = centroids(feats.block(x_train), y_train, k)
        head = winner.to_onnx(
            feats.dim, sel.reducer, cents if sel.ood_min is not None else None, feats.ood_block
        )
        _write_onnx(head, tmp / "head.onnx")
        parts: list[dict[str, Any]] = []
        for p in feats.parts:
            if isinstance(p, TfidfEmbedder):
                _write_onnx(p.to_onnx(), tmp / "tfidf.onnx")
                parts.append({**p.identity(), "file": "tfidf.onnx"})
            elif isinstance(p, EncoderEmbedder):
                model_file, tok_file = p.copy_files(tmp)
                parts.append({**p.identity(), "file": model_file, "tokenizer": tok_file})
        manifest["embedder"] = {"id": feats.embedder_id, "dim": feats.dim, "parts": parts}
        manifest["classifier"] = {
            "kind": winner.name,
            "params": winner.params,
            "file": "head.onnx",
            "output": "probabilities",
            "trained_on": "fit+validation" if opts.refit else "fit",
            "n_train": len(y_train),
        }
        manifest["ood"] = None
        if sel.ood_min is not None:
            block = feats.ood_block
            manifest["ood"] = {
                "method": "max cosine similarity to class centroids",
                "features": "all" if block is None else f"columns {block[0]}:{block[1]}",
                "output": "similarity",
                "min_similarity": sel.ood_min,
                "quantile": opts.ood_quantile,
            }
        entry: dict[str, Any] = {"kind": acceptor}
        if learned is not None:
            _write_onnx(learned_to_onnx(learned), tmp / "acceptor.onnx")
            entry.update(
                file="acceptor.onnx",
                output="probabilities",
                features=list(ACCEPTOR_FEATURES),
                model="logistic regression on degree-2 polynomial features",
                trained_on="validation",
            )
        manifest["acceptor"] = entry


def check_parity(
    sel: Selection,
    feats: Features,
    splits: Splits,
    tmp: Path,
    manifest: dict[str, Any],
    progress: Progress,
) -> Pipeline:
    """The exported graph must score as scikit-learn does; the pipeline that calibrates."""
    with progress.stage("parity: sklearn vs ONNX"):
        pipe = Pipeline(tmp, Scoring.parse(manifest), threads=2)
        sample = splits.texts_of("validation")[:400]
        onnx_feats = pipe.embed(sample)
        sk_feats: Any = embed(feats.parts, sample)
        sk_dense = sk_feats.toarray() if sp.issparse(sk_feats) else sk_feats
        emb_diff = float(np.abs(onnx_feats - sk_dense).max()) if sample else 0.0
        scores = pipe.score(sample)
        sk_probs = sel.winner.predict_proba(sk_feats, sel.reducer)
        prob_diff = float(np.abs(scores.probabilities - sk_probs).max()) if sample else 0.0
        agree = float((scores.label_index == sk_probs.argmax(axis=1)).mean()) if sample else 1.0
        manifest["parity"] = {
            "n": len(sample),
            "embedding_max_abs_diff": emb_diff,
            "probability_max_abs_diff": prob_diff,
            "label_agreement": agree,
        }
        progress.log(
            f"embedding diff {emb_diff:.2e}, probability diff {prob_diff:.2e}, "
            f"labels agree {agree:.4f}"
        )
        if emb_diff > 1e-3 or agree < 0.99:
            raise RuntimeError(f"ONNX export disagrees with sklearn: {manifest['parity']}")
    return pipe
