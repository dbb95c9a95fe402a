"""Trainer quality and speed benchmark (issue 3). Prints figures; not run by CI.

    .venv/bin/python bench/quality.py --sections banking,clinc,rte,guarantee,speed \
        --json bench/quality-results.json

The teacher is each data set's labels. Data: ../shared/datasets (relative to
the repository root); encoder: ../shared/models/all-MiniLM-L6-v2-onnx-int8.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router import ArtifactRefused, Router  # noqa: E402
from training.datasets import load_labelled  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import fit  # noqa: E402

SHARED = REPO.parent / "shared"
DATA = SHARED / "datasets"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2-onnx-int8"
EMBEDDERS = {"tfidf": "tfidf", "minilm": str(MINILM), "tfidf+minilm": f"tfidf+{MINILM}"}


def _fit_eval(
    train: list[tuple[str, str]],
    test: list[tuple[str, str]],
    work: Path,
    name: str,
    **opts: Any,
) -> dict[str, Any]:
    out = work / name
    t0 = time.perf_counter()
    result = fit(train, out, quiet=True, **opts)
    fit_s = time.perf_counter() - t0
    m = result.manifest
    row: dict[str, Any] = {"status": result.status, "fit_seconds": round(fit_s, 1)}
    if result.status == "refused":
        row["refusal"] = m["refusal"]
        return row
    router = Router.load(out, intra_op_threads=2)
    ev = evaluate(router, test)
    chosen = m["selection"]["chosen"]
    row.update(
        {
            "surrogate": f"{chosen['candidate']}+{chosen['acceptor']}",
            "threshold": m["threshold"],
            "calibration_coverage": m["calibration"]["coverage"],
            "calibration_lower_bound": m["calibration"]["lower_bound"],
            "test_coverage": ev["coverage"],
            "test_agreement_handled": ev["agreement_handled"],
            "test_accuracy": ev["agreement_overall"],
            "test_n": ev["n"],
            "out": str(out),
        }
    )
    return row


def _print_row(prefix: str, row: dict[str, Any]) -> None:
    if row["status"] == "refused":
        print(
            f"{prefix}: REFUSED ({row['refusal']['reason']}) fit {row['fit_seconds']}s", flush=True
        )
        return
    print(
        f"{prefix}: coverage {row['test_coverage']:.3f} agreement "
        f"{row['test_agreement_handled']:.3f} (accuracy {row['test_accuracy']:.3f}; "
        f"{row['surrogate']}; fit {row['fit_seconds']}s)",
        flush=True,
    )


def bench_banking(work: Path, embedders: list[str], alphas: list[float]) -> list[dict[str, Any]]:
    train = load_labelled(DATA / "banking77", "train")
    test = load_labelled(DATA / "banking77", "test")
    rows = []
    for emb in embedders:
        for alpha in alphas:
            row = _fit_eval(
                train, test, work, f"bank-{emb}-{alpha}",
                target=alpha, embedder=EMBEDDERS[emb], test_size=0.0,
            )  # fmt: skip
            row.update({"data": "banking77", "embedder": emb, "alpha": alpha})
            _print_row(f"banking77 {emb} alpha={alpha}", row)
            rows.append(row)
    return rows


def bench_clinc(work: Path, embedders: list[str], quantiles: list[float]) -> list[dict[str, Any]]:
    train = load_labelled(DATA / "clinc150", "train+val")
    test = load_labelled(DATA / "clinc150", "test")
    oos = load_labelled(DATA / "clinc150", "oos_test")
    rows = []
    for emb in embedders:
        for q in quantiles:
            row = _fit_eval(
                train, test, work, f"clinc-{emb}-{q}",
                target=0.95, embedder=EMBEDDERS[emb], test_size=0.0, ood_quantile=q,
            )  # fmt: skip
            row.update({"data": "clinc150", "embedder": emb, "alpha": 0.95, "ood_quantile": q})
            if row["status"] == "deployed":
                router = Router.load(row["out"], intra_op_threads=2)
                decisions = router.predict_batch([t for t, _ in oos])
                row["oos_deferred_share"] = float(
                    np.mean([d.decision == "deferred" for d in decisions])
                )
                row["oos_flagged_ood_share"] = float(np.mean([d.ood for d in decisions]))
                inscope = router.predict_batch([t for t, _ in test])
                row["inscope_flagged_ood_share"] = float(np.mean([d.ood for d in inscope]))
            _print_row(f"clinc150 {emb} ood_quantile={q}", row)
            if "oos_deferred_share" in row:
                print(
                    f"   oos deferred {row['oos_deferred_share']:.3f} (flagged OOD "
                    f"{row['oos_flagged_ood_share']:.3f}); in-scope flagged OOD "
                    f"{row['inscope_flagged_ood_share']:.3f}",
                    flush=True,
                )
            rows.append(row)
    return rows


def bench_rte(work: Path) -> list[dict[str, Any]]:
    train = load_labelled(DATA / "rte", "train")
    dev = load_labelled(DATA / "rte", "dev")
    rows = []
    for emb in ("tfidf", "minilm"):
        row = _fit_eval(train, dev, work, f"rte-{emb}", target=0.90, embedder=EMBEDDERS[emb])
        row.update({"data": "rte", "embedder": emb, "alpha": 0.90})
        _print_row(f"rte {emb} alpha=0.90", row)
        if row["status"] == "refused":
            try:
                Router.load(work / f"rte-{emb}")
            except ArtifactRefused as exc:
                row["router_load"] = f"ArtifactRefused: {exc}"
        rows.append(row)
    return rows


def bench_guarantee(
    work: Path, runs: int, alpha: float, embedder: str, horizon: int = 0
) -> dict[str, Any]:
    """Random re-splits of Banking77 (train + test pooled): fit on 10,003, test on 3,080.

    The check counts runs whose test batch falls below alpha, a batch promise; with
    `horizon` the gate certifies that promise for a batch of that many handled inputs.
    """
    pool = load_labelled(DATA / "banking77", "train") + load_labelled(DATA / "banking77", "test")
    n_train = 10_003
    rows = []
    for run in range(runs):
        rng = random.Random(1000 + run)
        shuffled = pool[:]
        rng.shuffle(shuffled)
        row = _fit_eval(
            shuffled[:n_train], shuffled[n_train:], work, f"guarantee-{run}",
            target=alpha, embedder=EMBEDDERS[embedder], test_size=0.0, seed=run,
            horizon=horizon, report=False,
        )  # fmt: skip
        _print_row(f"guarantee run {run}", row)
        rows.append(row)
    agreements = [r["test_agreement_handled"] for r in rows if r["status"] == "deployed"]
    below = sum(a < alpha for a in agreements)
    summary = {
        "runs": runs,
        "horizon": horizon,
        "deployed": len(agreements),
        "below_alpha": below,
        "share_below_alpha": below / max(1, len(agreements)),
        "agreement_min": min(agreements) if agreements else None,
        "agreement_mean": statistics.mean(agreements) if agreements else None,
        "coverage_mean": statistics.mean(
            r["test_coverage"] for r in rows if r["status"] == "deployed"
        )
        if agreements
        else None,
        "rows": rows,
    }
    print(
        f"guarantee (horizon {horizon}): {below}/{len(agreements)} runs below alpha={alpha} "
        f"(share {summary['share_below_alpha']:.3f}); min agreement {summary['agreement_min']}",
        flush=True,
    )
    return summary


def bench_speed(work: Path, n_calls: int) -> dict[str, Any]:
    train = load_labelled(DATA / "banking77", "train")
    test = load_labelled(DATA / "banking77", "test")
    times = []
    for rep in range(3):
        t0 = time.perf_counter()
        fit(train, work / f"speed-{rep}", quiet=True, seed=rep)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    router = Router.load(work / "speed-0")
    load_s = time.perf_counter() - t0
    texts = [t for t, _ in test]
    for t in texts[:200]:  # warm-up
        router.predict(t)
    lat = []
    for i in range(n_calls):
        text = texts[i % len(texts)]
        t0 = time.perf_counter()
        router.predict(text)
        lat.append(time.perf_counter() - t0)
    lat_ms = np.array(lat) * 1e3
    result = {
        "fit_seconds": [round(t, 1) for t in times],
        "load_seconds": round(load_s, 3),
        "predict_calls": n_calls,
        "predict_p50_ms": float(np.percentile(lat_ms, 50)),
        "predict_p90_ms": float(np.percentile(lat_ms, 90)),
        "predict_p99_ms": float(np.percentile(lat_ms, 99)),
        "predict_max_ms": float(lat_ms.max()),
    }
    print(
        f"speed: fit {result['fit_seconds']} s; load {result['load_seconds']} s; predict p50 "
        f"{result['predict_p50_ms']:.3f} ms, p99 {result['predict_p99_ms']:.3f} ms "
        f"over {n_calls} calls",
        flush=True,
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="banking,clinc,rte,guarantee,speed")
    p.add_argument("--embedders", default="tfidf,minilm,tfidf+minilm")
    p.add_argument("--clinc-embedders", default="tfidf,tfidf+minilm")
    p.add_argument("--alphas", default="0.90,0.95,0.97")
    p.add_argument("--ood-quantiles", default="0,0.01,0.05", help="CLINC150 OOD settings")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--horizon", type=int, default=2500,
                   help="guarantee section: promise alpha on a batch of this many handled "
                   "inputs (the 3,080-input test batch handles about 2,700; 0: on "
                   "average)")  # fmt: skip
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--work", default=None, help="where artifacts go (default: a temp dir)")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = p.parse_args()
    if not DATA.is_dir():
        print(f"benchmark data absent: {DATA}", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="tracer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    results: dict[str, Any] = {
        "machine": f"{platform.python_version()}, {platform.machine()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "banking" in sections:
        alphas = [float(a) for a in args.alphas.split(",")]
        results["banking77"] = bench_banking(work, args.embedders.split(","), alphas)
    if "clinc" in sections:
        quantiles = [float(q) for q in args.ood_quantiles.split(",")]
        results["clinc150"] = bench_clinc(work, args.clinc_embedders.split(","), quantiles)
    if "rte" in sections:
        results["rte"] = bench_rte(work)
    if "guarantee" in sections:
        results["guarantee"] = bench_guarantee(work, args.runs, 0.95, "tfidf", args.horizon)
    if "speed" in sections:
        results["speed"] = bench_speed(work, args.calls)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
