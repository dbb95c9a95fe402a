"""`fit`: teacher traces -> a served artifact, or a recorded refusal.

Stages: clean traces; stratified seeded splits (fit / validation /
calibration / test, disjoint); embed; train every candidate once on the fit
split and score it on validation; choose (candidate, acceptor) by the
coverage certified at alpha on validation; refit the winner on fit +
validation; export ONNX; score the calibration split *through the router*
and choose the threshold with a Clopper-Pearson fixed-sequence test; report
the test split (never used to choose); write the directory atomically.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp

from router import Router
from router.acceptor import ACCEPTOR_FEATURES, acceptor_features, simple_score
from router.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    canonical_json,
    manifest_digest,
    sha256_file,
)
from router.pipeline import Pipeline
from router.text import normalize_text
from training.acceptors import cross_fit_scores, fit_learned, learned_to_onnx
from training.bound import (
    Calibration,
    batch_target,
    calibrate,
    min_testable,
    start_count_for,
)
from training.candidates import Candidate, Reducer, default_candidates
from training.clusters import clusters_onnx, fit_clusters
from training.embedders import (
    EncoderEmbedder,
    TfidfEmbedder,
    embed,
    parse_embedder_spec,
)
from training.evaluate import summarize
from training.progress import Progress
from training.report import build_report, save_heldout, write_report
from training.splits import stratified_split
from training.traces import Trace, clean_traces, load_traces

ACCEPTORS = ("max_prob", "margin", "learned")


@dataclass
class FitOptions:
    target: float = 0.95  # alpha: agreement with the teacher on handled traffic
    confidence: float = 0.95  # 1 - delta
    min_coverage: float = 0.2  # the gate refuses below this calibrated coverage
    horizon: int = 0  # >0: promise alpha on the next `horizon` handled inputs, not on average
    embedder: str = "tfidf"  # "tfidf" | encoder folder | "tfidf+FOLDER"
    encoder_weight: float = 2.0  # scale of the encoder block when joined with TF-IDF
    seed: int = 0
    test_size: float = 0.1
    # The bound's slack shrinks with the calibration size; past ~5k training traces the
    # surrogate gains less from a tenth more data than the threshold does from it.
    calibration_size: float = 0.25
    validation_size: float = 0.15
    labels: Sequence[str] | None = None  # closed label set; others are dropped
    candidates: list[str] | None = None  # None: all
    acceptors: tuple[str, ...] = ACCEPTORS
    ood_quantile: float = 0.01  # share of in-distribution validation flagged OOD; 0 disables
    refit: bool = True  # retrain the winner on fit + validation
    min_traces: int = 50
    svd_components: int = 128
    task: str | None = None
    quiet: bool = False
    report: bool = True  # write report.html/report.json beside the model

    @property
    def delta(self) -> float:
        return 1.0 - self.confidence


@dataclass
class FitResult:
    status: str  # "deployed" | "refused" | "failed"
    manifest: dict[str, Any]
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def deployed(self) -> bool:
        return self.status == "deployed"


def _as_traces(traces: Sequence[Trace] | Sequence[tuple[str, str]] | str | Path) -> list[Trace]:
    if isinstance(traces, str | Path):
        return load_traces(traces)
    out = []
    for t in traces:
        if isinstance(t, Trace):
            out.append(t)
        elif isinstance(t, dict):
            out.append(Trace(t["input"], t["label"], t.get("source") or "teacher"))
        else:
            out.append(Trace(t[0], t[1]))
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    try:
        out["tracer-proxy"] = md.version("tracer-proxy")
    except md.PackageNotFoundError:
        out["tracer-proxy"] = "dev"
    return out


def _centroids(x: Any, y: np.ndarray, n_classes: int) -> np.ndarray:
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


def _similarity(x: Any, centroids: np.ndarray) -> np.ndarray:
    dots = np.asarray(x @ centroids.T)
    if sp.issparse(x):
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    else:
        norms = np.linalg.norm(x, axis=1)
    return (dots / np.clip(norms, 1e-12, None)[:, None]).max(axis=1)


def _write_onnx(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _finalize_manifest(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    files = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME:
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["files"] = files
    ident = canonical_json({"files": files, "threshold": manifest.get("threshold")})
    import hashlib

    manifest["version"] = hashlib.sha256(ident).hexdigest()[:12]
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (directory / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest


def _publish(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp; a crash leaves either the old dir or no dir."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Refusal(Exception):
    def __init__(self, code: str, reason: str, **figures: Any) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.figures = figures


def fit(
    traces: Sequence[Trace] | Sequence[tuple[str, str]] | str | Path,
    out_dir: str | Path,
    options: FitOptions | None = None,
    **overrides: Any,
) -> FitResult:
    """Fit and gate; write `out_dir` (deployed artifact or refusal manifest)."""
    opts = options or FitOptions()
    if overrides:
        opts = FitOptions(**{**asdict(opts), **overrides})
    if not (0.0 < opts.target < 1.0 and 0.0 < opts.confidence < 1.0):
        raise ValueError("target and confidence must lie strictly between 0 and 1")
    if opts.test_size + opts.calibration_size + opts.validation_size >= 1.0:
        raise ValueError("split sizes leave nothing to fit on")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    progress = Progress(quiet=opts.quiet)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": "refused",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": opts.task,
        "alpha": opts.target,
        "delta": round(opts.delta, 10),
        "min_coverage": opts.min_coverage,
        "seed": opts.seed,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("labels", "quiet")},
        "versions": _versions(),
    }
    try:
        try:
            _run(traces, tmp, opts, manifest, progress)
            manifest["status"] = "deployed"
        except _Refusal as refusal:
            _ship_nothing(tmp, manifest, "refused")
            manifest["refusal"] = {
                "code": refusal.code,
                "reason": refusal.reason,
                **refusal.figures,
            }
        except Exception as exc:  # a bug or bad data: a recorded outcome, not a traceback
            _ship_nothing(tmp, manifest, "failed")
            manifest["refusal"] = {"code": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            progress.log(f"fit failed: {type(exc).__name__}: {exc}")
        manifest["timings"] = progress.timings
        manifest["fit_seconds"] = round(progress.elapsed(), 3)
        manifest = _finalize_manifest(manifest, tmp)
        if manifest["status"] == "deployed":
            Router.load(tmp)  # what we publish must load and verify
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if opts.report:
        with progress.stage("report"):
            try:
                write_report(build_report(out_dir, seed=opts.seed), out_dir)
            except Exception as exc:  # the model stands; only its explanation is missing
                progress.log(f"report failed: {exc}")
    progress.summary(manifest)
    return FitResult(manifest["status"], manifest, out_dir, progress.timings)


def _ship_nothing(tmp: Path, manifest: dict[str, Any], status: str) -> None:
    """A refused or failed fit publishes its manifest (with why) and no model."""
    manifest["status"] = status
    manifest["threshold"] = None
    for p in tmp.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _run(
    traces_in: Any, tmp: Path, opts: FitOptions, manifest: dict[str, Any], progress: Progress
) -> None:
    # What is certified: alpha itself, or a stricter rate that keeps a batch of
    # `horizon` handled inputs at alpha (training/bound.py).
    alpha, delta = batch_target(opts.target, opts.delta, opts.horizon)
    manifest["certified"] = {"alpha": alpha, "delta": delta, "horizon": opts.horizon}
    with progress.stage("load and clean traces"):
        raw = _as_traces(traces_in)
        traces, stats = clean_traces(raw, opts.labels)
        manifest["data"] = stats.as_dict()
        progress.log(
            f"{stats.n_read} read, {stats.n_used} used: {stats.empty_input} empty, "
            f"{stats.invalid_label} invalid label, {stats.duplicates} duplicates, "
            f"{stats.conflicting_dropped} conflicting"
        )
    labels_all = sorted({t.label for t in traces})
    if len(traces) < opts.min_traces or len(labels_all) < 2:
        raise _Refusal(
            "too_few_traces",
            f"{len(traces)} usable traces with {len(labels_all)} labels; need at least "
            f"{opts.min_traces} traces and 2 labels",
        )

    with progress.stage("split"):
        y_str = [t.label for t in traces]
        fractions = {
            "fit": 1.0 - opts.test_size - opts.calibration_size - opts.validation_size,
            "validation": opts.validation_size,
            "calibration": opts.calibration_size,
            "test": opts.test_size,
        }
        if fractions["fit"] <= 0:
            raise ValueError("split sizes leave nothing to fit on")
        # Only traces sampled independently of a model may judge a model; the ones
        # a served model deferred are its hard cases and would skew calibration.
        sampled = np.array([i for i, t in enumerate(traces) if t.representative], dtype=np.int64)
        deferred = np.array([i for i, t in enumerate(traces) if not t.representative], np.int64)
        fractions = _shares_of_sampled(fractions, len(sampled), len(deferred))
        splits = {
            name: sampled[idx]
            for name, idx in stratified_split(
                [y_str[i] for i in sampled], fractions, opts.seed
            ).items()
        }
        splits["fit"] = np.sort(np.concatenate([splits["fit"], deferred]))
        manifest["splits"] = {k: len(v) for k, v in splits.items()}
        manifest["data"]["representative"] = len(sampled)
        manifest["data"]["deferred_fit_only"] = len(deferred)
        texts = [normalize_text(t.input) for t in traces]
        raw_texts = [t.input for t in traces]
        progress.log(
            ", ".join(f"{k} {len(v)}" for k, v in splits.items())
            + (f" (fit includes {len(deferred)} deferred traces)" if len(deferred) else "")
        )
    n_cal = len(splits["calibration"])
    if n_cal < min_testable(alpha, delta):
        raise _Refusal(
            "too_few_calibration",
            f"calibration split has {n_cal} traces; a bound at alpha={alpha}, "
            f"delta={delta:.3g} needs at least {min_testable(alpha, delta)}",
        )

    train_idx = (
        np.concatenate([splits["fit"], splits["validation"]]) if opts.refit else splits["fit"]
    )
    labels = sorted({y_str[i] for i in train_idx})
    lab_index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    y = np.array([lab_index.get(s, -1) for s in y_str])
    if k < 2:
        raise _Refusal("too_few_labels", "fewer than 2 labels in the training splits")
    manifest["labels"] = labels

    with progress.stage("embed"):
        parts = parse_embedder_spec(opts.embedder, encoder_weight=opts.encoder_weight)
        fit_texts = [texts[i] for i in splits["fit"]]
        val_texts = [texts[i] for i in splits["validation"]]
        for p in parts:
            p.fit(fit_texts + val_texts)  # unsupervised; calibration and test never seen
        x_fit = embed(parts, fit_texts)
        x_val = embed(parts, val_texts)
        dim = x_fit.shape[1]
        emb_id = "+".join(
            "tfidf" if p.kind == "tfidf" else f"encoder:{p.folder.name}" for p in parts
        )
        progress.log(f"embedder {emb_id}: {dim} features")
    y_fit, y_val = y[splits["fit"]], y[splits["validation"]]

    reducer = Reducer(dim, opts.svd_components, opts.seed)
    candidates = default_candidates(opts.candidates, opts.seed)
    if any(c.name != "linear_svm" for c in candidates) and not reducer.identity:
        with progress.stage("reduce (TruncatedSVD)"):
            reducer.fit(x_fit)

    # OOD check on the encoder block when there is one: sentence embeddings
    # separate unseen topics better than TF-IDF (CLINC150 out-of-scope queries).
    ood_block: tuple[int, int] | None = None
    if len(parts) > 1 and any(isinstance(p, EncoderEmbedder) for p in parts):
        start = sum(p.dim for p in parts if isinstance(p, TfidfEmbedder))
        ood_block = (start, dim)

    def _block(x: Any) -> Any:
        return x if ood_block is None else x[:, ood_block[0] : ood_block[1]]

    centroids = _centroids(_block(x_fit), y_fit, k)
    sim_val = _similarity(_block(x_val), centroids)
    ood_min = float(np.quantile(sim_val, opts.ood_quantile)) if opts.ood_quantile > 0 else None
    ood_val = sim_val < ood_min if ood_min is not None else np.zeros(len(y_val), bool)

    rows: list[dict[str, Any]] = []
    best: tuple[tuple[float, float, float], Candidate, str, np.ndarray] | None = None
    with progress.stage("candidates"):
        for cand in candidates:
            t0 = time.perf_counter()
            cand.fit(x_fit, y_fit, k, reducer)
            cand.tune(x_val, y_val, reducer)
            probs = cand.predict_proba(x_val, reducer)
            secs = time.perf_counter() - t0
            correct = probs.argmax(axis=1) == y_val
            feats = acceptor_features(probs, sim_val)
            for acc in opts.acceptors:
                if acc == "learned":
                    score = cross_fit_scores(feats, correct, opts.seed)
                else:
                    score = simple_score(acc, feats)
                score = np.where(ood_val, -np.inf, score)
                start = start_count_for(len(score), opts.min_coverage)
                cal = calibrate(score, correct, alpha, delta, start_count=start)
                row = {
                    "candidate": cand.name,
                    "acceptor": acc,
                    "params": cand.params,
                    "accuracy": float(correct.mean()),
                    "coverage": cal.coverage,
                    "agreement": cal.agreement,
                    "best_empirical_coverage": cal.best_empirical_coverage,
                    "fit_seconds": secs,
                }
                rows.append(row)
                key = (cal.coverage, cal.best_empirical_coverage, float(correct.mean()))
                if best is None or key > best[0]:
                    best = (key, cand, acc, feats)
            progress.log(f"  {cand.name}: accuracy {correct.mean():.3f} ({secs:.1f}s)")
    assert best is not None
    progress.candidates(rows, alpha)
    _, winner, acc_kind, val_feats = best
    chosen = (winner.name, acc_kind)
    manifest["selection"] = {
        "metric": "coverage certified at alpha on the validation split",
        "candidates": [{**r, "fit_seconds": round(r["fit_seconds"], 3)} for r in rows],
        "chosen": {"candidate": winner.name, "acceptor": acc_kind, "params": winner.params},
    }
    val_correct = winner.predict_proba(x_val, reducer).argmax(axis=1) == y_val

    learned = None
    if acc_kind == "learned":
        learned = fit_learned(val_feats, val_correct)
        if learned is None:
            acc_kind = "max_prob"

    with progress.stage(f"refit {winner.name} on fit + validation" if opts.refit else "export"):
        if opts.refit:
            x_train = (
                sp.vstack([x_fit, x_val], format="csr")
                if sp.issparse(x_fit)
                else np.vstack([x_fit, x_val])
            )
            y_train = np.concatenate([y_fit, y_val])
            if winner.uses_reducer and not reducer.identity:
                reducer = Reducer(dim, opts.svd_components, opts.seed).fit(x_train)
            winner.fit(x_train, y_train, k, reducer)
            centroids = _centroids(_block(x_train), y_train, k)
        else:
            x_train, y_train = x_fit, y_fit
        head = winner.to_onnx(dim, reducer, centroids if ood_min is not None else None, ood_block)
        _write_onnx(head, tmp / "head.onnx")
        emb_parts: list[dict[str, Any]] = []
        for p in parts:
            if isinstance(p, TfidfEmbedder):
                _write_onnx(p.to_onnx(), tmp / "tfidf.onnx")
                emb_parts.append({**p.identity(), "file": "tfidf.onnx"})
            elif isinstance(p, EncoderEmbedder):
                model_file, tok_file = p.copy_files(tmp)
                emb_parts.append({**p.identity(), "file": model_file, "tokenizer": tok_file})
        manifest["embedder"] = {"id": emb_id, "dim": dim, "parts": emb_parts}
        manifest["classifier"] = {
            "kind": winner.name,
            "params": winner.params,
            "file": "head.onnx",
            "output": "probabilities",
            "trained_on": "fit+validation" if opts.refit else "fit",
            "n_train": len(y_train),
        }
        manifest["ood"] = (
            None
            if ood_min is None
            else {
                "method": "max cosine similarity to class centroids",
                "features": "all"
                if ood_block is None
                else f"columns {ood_block[0]}:{ood_block[1]}",
                "output": "similarity",
                "min_similarity": ood_min,
                "quantile": opts.ood_quantile,
            }
        )
        acc_entry: dict[str, Any] = {"kind": acc_kind}
        if learned is not None:
            _write_onnx(learned_to_onnx(learned), tmp / "acceptor.onnx")
            acc_entry.update(
                {
                    "file": "acceptor.onnx",
                    "output": "probabilities",
                    "features": list(ACCEPTOR_FEATURES),
                    "model": "logistic regression on degree-2 polynomial features",
                    "trained_on": "validation",
                }
            )
        manifest["acceptor"] = acc_entry

    with progress.stage("parity: sklearn vs ONNX"):
        pipe = Pipeline(tmp, manifest, threads=2)
        sample = np.arange(min(len(val_texts), 400))
        sample_texts = [val_texts[i] for i in sample]
        onnx_feats = pipe.embed(sample_texts)
        sk_feats = embed(parts, sample_texts)
        sk_dense = sk_feats.toarray() if sp.issparse(sk_feats) else sk_feats
        emb_diff = float(np.abs(onnx_feats - sk_dense).max())
        scores = pipe.score(sample_texts)
        sk_probs = winner.predict_proba(sk_feats, reducer)
        prob_diff = float(np.abs(scores.probabilities - sk_probs).max())
        label_agree = float((scores.label_index == sk_probs.argmax(axis=1)).mean())
        manifest["parity"] = {
            "n": len(sample),
            "embedding_max_abs_diff": emb_diff,
            "probability_max_abs_diff": prob_diff,
            "label_agreement": label_agree,
        }
        progress.log(
            f"embedding diff {emb_diff:.2e}, probability diff {prob_diff:.2e}, "
            f"labels agree {label_agree:.4f}"
        )
        if emb_diff > 1e-3 or label_agree < 0.99:
            raise RuntimeError(f"ONNX export disagrees with sklearn: {manifest['parity']}")

    with progress.stage("calibrate threshold (through the router)"):
        cal_idx = splits["calibration"]
        s = pipe.score([raw_texts[i] for i in cal_idx])
        cal_correct = s.label_index == y[cal_idx]
        cal_scores = np.where(s.ood, -np.inf, s.accept_score)
        # Start where validation (independent of calibration) says coverage is
        # reachable: half of it (certified or empirical), at least half the minimum.
        val_cov = max(
            max(r["coverage"], r["best_empirical_coverage"])
            for r in rows
            if (r["candidate"], r["acceptor"]) == chosen
        )
        start = start_count_for(len(cal_scores), max(opts.min_coverage, val_cov))
        cal = calibrate(cal_scores, cal_correct, alpha, delta, start_count=start)
        manifest["calibration_start_count"] = start
        manifest["calibration"] = {**cal.as_dict(), "ood_share": float(s.ood.mean())}
        progress.log(
            f"threshold {cal.threshold}, coverage {cal.coverage:.3f}, agreement {cal.agreement}"
        )
    _gate(cal, opts, manifest)
    manifest["threshold"] = cal.threshold

    with progress.stage("report test split"):
        test_idx = splits["test"]
        if len(test_idx):
            s = pipe.score([raw_texts[i] for i in test_idx])
            handled = (~s.ood) & (s.accept_score >= cal.threshold)
            gold = np.array([y_str[i] for i in test_idx], dtype=object)
            pred = np.array(labels, dtype=object)[s.label_index]
            manifest["test"] = summarize(pred, handled, s.ood, gold)
        else:
            manifest["test"] = {"n": 0, "note": "test_size=0: no held-out split in this fit"}

    with progress.stage("clusters (held-out traces)"):
        held = np.concatenate([splits["calibration"], splits["test"]])
        clusters = fit_clusters(
            embed(parts, [texts[i] for i in held]), [y_str[i] for i in held], opts.seed
        )
        _write_onnx(clusters_onnx(clusters, dim), tmp / "clusters.onnx")
        manifest["clusters"] = {
            "file": "clusters.onnx",
            "k": clusters.k,
            "names": clusters.names,
            "silhouette": clusters.silhouette,
            "fitted_on": f"{len(held)} held-out traces (calibration and test splits)",
        }
        save_heldout(
            tmp,
            {
                split: [(raw_texts[i], y_str[i]) for i in splits[split]]
                for split in ("calibration", "test")
            },
        )
        progress.log(f"{clusters.k} clusters, silhouette {clusters.silhouette}")


def _shares_of_sampled(
    fractions: dict[str, float], n_sampled: int, n_deferred: int
) -> dict[str, float]:
    """Split shares for the sampled traces, given that deferred ones can only train.

    Deferred traces count towards the fit split's share of all traces; what they
    free of the sampled traces goes to calibration, where sample size is coverage.
    """
    if n_deferred == 0 or n_sampled == 0:
        return fractions
    wanted = fractions["fit"] * (n_sampled + n_deferred)
    fit_share = min(fractions["fit"], max(0.0, wanted - n_deferred) / n_sampled)
    return {
        **fractions,
        "fit": fit_share,
        "calibration": fractions["calibration"] + fractions["fit"] - fit_share,
    }


def _gate(cal: Calibration, opts: FitOptions, manifest: dict[str, Any]) -> None:
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
        raise _Refusal(
            "no_threshold",
            f"no threshold certifies {promise} at confidence "
            f"{opts.confidence} on {cal.n} calibration traces (overall agreement "
            f"{cal.overall_agreement:.3f}; best empirical coverage at alpha "
            f"{cal.best_empirical_coverage:.3f})",
            **figures,
        )
    if cal.coverage < opts.min_coverage:
        raise _Refusal(
            "coverage_below_minimum",
            f"certified coverage {cal.coverage:.3f} at {promise} is below "
            f"the minimum {opts.min_coverage}",
            **figures,
        )
