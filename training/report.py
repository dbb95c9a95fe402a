"""What the surrogate handles and why it defers, computed on held-out traces only.

The inputs here were never used to fit the model: the calibration split sets the
thresholds of the frontier, and everything else (clusters, boundary pairs,
disagreements, the map, the summary) is measured on the test split, or on a
labelled file the user passes. The model is scored through `router.Router`,
exactly as it is served.

`build_report` returns a plain dict (also written as report.json); `report_html`
renders it as one self-contained page.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.preprocessing import normalize

from router import ArtifactError, ArtifactRefused, Router
from router.manifest import read_manifest
from router.report_html import render_html
from router.stats import cp_interval
from router.traces import Trace

from .answers import agreement_mask
from .bound import calibrate
from .clusters import kmeans_by_silhouette
from .traces import load_traces

HELDOUT_FILE = "heldout.jsonl"
FRONTIER_ALPHAS = (0.80, 0.85, 0.90, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99)
MAP_POINTS = 2000
Labelled = Sequence[Trace] | Sequence[tuple[str, str]]


def _traces(data: Labelled | None) -> list[Trace]:
    return [t if isinstance(t, Trace) else Trace(t[0], t[1]) for t in data or []]


def _agrees(router: Router, label_index: np.ndarray, data: Sequence[Trace]) -> np.ndarray:
    """Would the rendered answer (the teacher's words for the label) be the teacher's?"""
    manifest = router.manifest
    answers = manifest.answers or {label: label for label in router.labels}
    predicted = [router.labels[i] for i in label_index]
    return agreement_mask(predicted, data, answers, manifest.output_format)


def interval(k: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Two-sided Clopper-Pearson interval of k successes in n trials, as a JSON list."""
    bounds = cp_interval(k, n, confidence)
    return None if bounds is None else list(bounds)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def choose_clusters(z: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """K-means with the k of best silhouette (`training.clusters`), for old artifacts
    that ship no clusters of their own."""
    assign, _ = kmeans_by_silhouette(z, seed)
    return assign, int(assign.max()) + 1


def _frontier(
    router: Router, calibration: Sequence[Trace], test_handled: Any, delta: float
) -> list[dict[str, Any]]:
    """For each α, the threshold certified on calibration, measured on the test split."""
    if not calibration:
        return []
    cal_scores = router.score([t.input for t in calibration])
    cal_correct = _agrees(router, cal_scores.label_index, calibration)
    scores = np.where(cal_scores.ood, -np.inf, cal_scores.accept_score)
    test_scores, test_ood, test_correct = test_handled
    rows = []
    for alpha in FRONTIER_ALPHAS:
        cal = calibrate(scores, cal_correct, alpha, delta)
        row: dict[str, Any] = {"alpha": alpha, "threshold": cal.threshold}
        if cal.threshold is None:
            row.update(coverage=0.0, agreement=None)
        else:
            handled = (~test_ood) & (test_scores >= cal.threshold)
            row["coverage"] = float(handled.mean()) if len(handled) else 0.0
            row["agreement"] = float(test_correct[handled].mean()) if handled.any() else None
        rows.append(row)
    return rows


def build_report(
    artifact: str | Path,
    heldout: Labelled | None = None,
    calibration: Labelled | None = None,
    *,
    seed: int = 0,
    description: str | None = None,
) -> dict[str, Any]:
    """The report of an artifact on held-out pairs (default: the test split it saved)."""
    directory = Path(artifact)
    manifest = read_manifest(directory, allow_refused=True)
    saved = _saved_heldout(directory)
    test = _traces(heldout) if heldout is not None else saved.get("test", [])
    cal = _traces(calibration) if calibration is not None else saved.get("calibration", [])
    source = f"test split saved by the fit ({len(test)} traces, never used to fit or choose)"
    if heldout is None and not test and cal:  # a live fit: its test is the fresh traffic
        test = cal
        source = (
            f"calibration split ({len(cal)} traces; the fit kept no test split, so these "
            "figures are on the traces that chose the threshold)"
        )
    report: dict[str, Any] = {
        "task": manifest.task,
        "version": directory.name,
        "status": manifest.status,
        "alpha": manifest.alpha,
        "delta": manifest.delta,
        "threshold": manifest.threshold,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {
            "description": description or source,
            "n": len(test),
        },
        "summary": {"n": len(test)},
        "frontier": [],
        "clusters": [],
        "boundary_pairs": [],
        "disagreements": [],
        "map": {"method": "pca", "points": []},
    }
    if not manifest.deployed:
        report["refusal"] = manifest.raw.get("refusal")
        return report
    tools = manifest.raw.get("tools")
    if isinstance(tools, dict):  # a tool task: whole calls and narrowed names, by tool
        report["tools"] = tools.get("test")
    try:
        router = Router.load(directory)
    except ArtifactRefused as exc:
        report["refusal"] = exc.manifest.raw.get("refusal")
        return report
    if not test:
        return report
    texts = [t.input for t in test]
    gold = np.array([t.label for t in test])
    scores = router.score(texts)
    pred = np.array(router.labels)[scores.label_index]
    handled = (~scores.ood) & (scores.accept_score >= router.threshold)
    agree = _agrees(router, scores.label_index, test)
    report["summary"].update(
        coverage=float(handled.mean()),
        agreement_handled=float(agree[handled].mean()) if handled.any() else None,
        agreement_all=float(agree.mean()),
        ood_share=float(scores.ood.mean()),
    )
    delta = manifest.delta or 0.05
    report["frontier"] = _frontier(router, cal, (scores.accept_score, scores.ood, agree), delta)

    # TF-IDF embeddings are wide and mostly zero: hold them sparse, a batch at a time.
    feats = normalize(
        sp.vstack(
            [
                sp.csr_matrix(router.pipeline.embed(texts[i : i + 256]))
                for i in range(0, len(texts), 256)
            ]
        )
    )
    if len(texts) >= 10:
        dims = max(2, min(50, feats.shape[1] - 1, len(texts) - 1))
        z = _unit_rows(TruncatedSVD(n_components=dims, random_state=seed).fit_transform(feats))
    else:  # too few inputs to project; their geometry is all there is
        z = feats.toarray()
    names = router.pipeline.cluster_names
    if names and (scores.cluster >= 0).all():  # the clusters the router names when serving
        cluster_of, k = scores.cluster, len(names)
    else:
        cluster_of, k = choose_clusters(z, seed)
    rows = [
        {"input": t, "label": str(g), "surrogate": str(p), "score": float(s), "decision": d}
        for t, g, p, s, d in zip(
            texts,
            gold,
            pred,
            scores.accept_score,
            np.where(handled, "handled", "deferred"),
            strict=True,
        )
    ]
    report["clusters"] = _clusters(rows, z, cluster_of, k, handled, agree, names)
    report["boundary_pairs"] = _boundary_pairs(rows, z, handled)
    report["disagreements"] = _disagreements(rows, handled, agree)
    report["map"]["points"] = _map(rows, z, cluster_of, seed)
    return report


def _clusters(
    rows: list[dict[str, Any]],
    z: np.ndarray,
    cluster_of: np.ndarray,
    k: int,
    handled: np.ndarray,
    agree: np.ndarray,
    names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    n = len(rows)
    out = []
    for c in range(k):
        idx = np.flatnonzero(cluster_of == c)
        if not len(idx):
            continue
        h = handled[idx]
        n_handled = int(h.sum())
        coverage = n_handled / len(idx)
        n_agree = int(agree[idx][h].sum())
        centre = z[idx].mean(axis=0)
        nearest = idx[np.argsort(-(z[idx] @ centre))]
        examples = [rows[i] for i in nearest[:3]]
        deferred = [rows[i] for i in nearest if not handled[i]][:1]
        if deferred and deferred[0] not in examples:
            examples.append(deferred[0])
        labels = Counter(rows[i]["label"] for i in idx).most_common(3)
        out.append(
            {
                "id": int(c),
                "name": names[c] if c < len(names) else None,
                "size": len(idx),
                "share": len(idx) / n,
                "top_labels": [[label, count] for label, count in labels],
                "coverage": coverage,
                "coverage_ci": interval(n_handled, len(idx)),
                "agreement": n_agree / n_handled if n_handled else None,
                "agreement_ci": interval(n_agree, n_handled),
                "decision": "handled"
                if coverage >= 0.9
                else "deferred"
                if coverage <= 0.1
                else "mixed",
                "examples": [
                    {k: e[k] for k in ("input", "label", "decision", "score")} for e in examples
                ],
            }
        )
    return sorted(out, key=lambda c: -c["size"])


def _boundary_pairs(
    rows: list[dict[str, Any]], z: np.ndarray, handled: np.ndarray, limit: int = 12
) -> list[dict[str, Any]]:
    """Deferred inputs and their most similar handled neighbour, most similar first."""
    hi, di = np.flatnonzero(handled), np.flatnonzero(~handled)
    if not len(hi) or not len(di):
        return []
    sims = z[di] @ z[hi].T
    nearest = sims.argmax(axis=1)
    best = sims[np.arange(len(di)), nearest]
    pairs, used = [], set()
    for j in np.argsort(-best):
        h = int(hi[nearest[j]])
        if h in used:
            continue
        used.add(h)
        pick = ("input", "label", "score")
        pairs.append(
            {
                "handled": {key: rows[h][key] for key in pick},
                "deferred": {key: rows[int(di[j])][key] for key in pick},
                "similarity": float(best[j]),
            }
        )
        if len(pairs) == limit:
            break
    return pairs


def _disagreements(
    rows: list[dict[str, Any]], handled: np.ndarray, agree: np.ndarray, limit: int = 20
) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in np.flatnonzero(~agree):
        groups[(rows[i]["label"], rows[i]["surrogate"])].append(int(i))
    cards: list[dict[str, Any]] = [
        {
            "teacher": teacher,
            "surrogate": surrogate,
            "count": len(idx),
            "handled": int(handled[idx].sum()),
            "examples": [rows[i]["input"] for i in idx[:3]],
        }
        for (teacher, surrogate), idx in groups.items()
    ]
    return sorted(cards, key=lambda c: (-c["count"], -c["handled"]))[:limit]


def _map(
    rows: list[dict[str, Any]], z: np.ndarray, cluster_of: np.ndarray, seed: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    idx = np.arange(len(rows))
    if len(idx) > MAP_POINTS:
        idx = np.sort(rng.choice(idx, MAP_POINTS, replace=False))
    if len(rows) >= 3:
        xy = PCA(n_components=2, random_state=seed).fit_transform(z)
    else:
        xy = np.zeros((len(rows), 2))
    return [
        {
            "x": round(float(xy[i, 0]), 5),
            "y": round(float(xy[i, 1]), 5),
            "decision": rows[i]["decision"],
            "cluster": int(cluster_of[i]),
            "label": rows[i]["label"],
        }
        for i in idx
    ]


def _saved_heldout(directory: Path) -> dict[str, list[Trace]]:
    path = directory / HELDOUT_FILE
    out: dict[str, list[Trace]] = {"test": [], "calibration": []}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            trace = Trace(row["input"], row["label"], raw_output=row.get("raw_output"))
            out.setdefault(row.get("split", "test"), []).append(trace)
    return out


def save_heldout(directory: Path, splits: dict[str, Sequence[Trace]]) -> None:
    """Keep the calibration and test traces beside the model, for reports made later."""
    with (directory / HELDOUT_FILE).open("w", encoding="utf-8") as f:
        for split, traces in splits.items():
            for t in traces:
                f.write(t.to_json(split=split) + "\n")


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def report_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tracer report",
        description="Write report.html and report.json: what the surrogate handles and why "
        "it defers, on held-out traces.",
    )
    parser.add_argument("dir", type=Path, help="an artifact directory written by tracer fit")
    parser.add_argument(
        "--data", type=Path, help="labelled JSONL to report on instead of the saved test split"
    )
    parser.add_argument("--out", type=Path, help="where to write (default: DIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    try:
        heldout = None
        description = None
        if args.data is not None:
            heldout = load_traces(args.data)
            description = f"{args.data.name} ({len(heldout)} labelled inputs)"
        report = build_report(args.dir, heldout, seed=args.seed, description=description)
    except (ArtifactError, OSError, ValueError) as exc:
        print(f"tracer report: {exc}", file=sys.stderr)
        return 1
    json_path, html_path = write_report(report, args.out or args.dir)
    print(f"wrote {html_path} and {json_path}")
    return 0
