"""Does the average of the smooth candidates certify more than the best single one?

A live task's refits train on a few thousand traces, where how well a surrogate's
confidence ranks inputs decides how much it may answer. For each shuffle of a data
set's train split, the trainer fits the first `--traces` rows twice, with and without
`knn` and `ensemble` among the candidates, as a live refit would (no test split,
`--delta-share` of delta), and both fits are served through `router.Router` on the
next `--fresh` rows: coverage and agreement there, and the latency of one input.

    .venv/bin/python bench/candidates.py --data banking77 --seeds 0-5
    .venv/bin/python bench/candidates.py --data clinc150 --seeds 0-5
    .venv/bin/python bench/candidates.py --data banking77 --embedder tfidf --seeds 0-2

The teacher is the data set's labels. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel import seeds  # noqa: E402  (a sibling script: '0-5' or '0,2,5')

from router import Router  # noqa: E402
from training.datasets import load_labelled  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import fit  # noqa: E402

DATA = REPO.parent / "shared" / "datasets"
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx-int8"
ARMS = {
    "single": ["linear_svm", "logreg", "mlp", "extra_trees"],
    "with ensemble": None,  # the default: all, knn and the ensemble included
}


def latency_ms(router: Router, texts: list[str], calls: int) -> tuple[float, float]:
    for t in texts[:50]:
        router.predict(t)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        router.predict(texts[i % len(texts)])
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def one_arm(
    traces: list[tuple[str, str]],
    fresh: list[tuple[str, str]],
    out: Path,
    candidates: list[str] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = fit(
        traces, out, quiet=True, embedder=str(MINILM) if args.embedder == "minilm" else "tfidf",
        candidates=candidates, delta_share=args.delta_share, test_size=0.0,
        calibration_size=0.35, min_coverage=0.1, report=False,
    )  # fmt: skip
    row: dict[str, Any] = {"status": result.status, "fit_s": round(time.perf_counter() - t0, 1)}
    if result.status != "deployed":
        return {**row, "refusal": result.manifest.get("refusal")}
    m = result.manifest
    router = Router.load(out, intra_op_threads=1)
    ev = evaluate(router, fresh)
    p50, p99 = latency_ms(router, [t for t, _ in fresh], args.calls)
    chosen = m["selection"]["chosen"]
    row.update(
        surrogate=f"{chosen['candidate']}+{chosen['acceptor']}",
        calibration_coverage=m["calibration"]["coverage"],
        coverage=ev["coverage"],
        agreement=ev["agreement_handled"],
        predict_p50_ms=round(p50, 3),
        predict_p99_ms=round(p99, 3),
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["banking77", "clinc150"], default="banking77")
    ap.add_argument("--embedder", choices=["minilm", "tfidf"], default="minilm")
    ap.add_argument("--seeds", default="0-5")
    ap.add_argument("--traces", type=int, default=4000)
    ap.add_argument("--fresh", type=int, default=4000)
    # 6 / (pi^2 3^2): what a task's third tested refit spends (proxy/refit.py)
    ap.add_argument("--delta-share", type=float, default=0.0675)
    ap.add_argument("--calls", type=int, default=1000, help="timed single predictions")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    split = "train" if args.data == "banking77" else "train+val"
    rows = load_labelled(DATA / args.data, split)
    runs = []
    for seed in seeds(args.seeds):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        traces, fresh = shuffled[: args.traces], shuffled[args.traces : args.traces + args.fresh]
        with tempfile.TemporaryDirectory() as tmp:
            for name, cands in ARMS.items():
                row = one_arm(traces, fresh, Path(tmp) / name.replace(" ", "_"), cands, args)
                runs.append({"seed": seed, "arm": name, **row})
                print(json.dumps(runs[-1]), flush=True)
    for name in ARMS:
        arm = [r for r in runs if r["arm"] == name]
        cov = [r.get("coverage", 0.0) for r in arm]
        agr = [r["agreement"] for r in arm if r.get("agreement") is not None]
        print(
            f"{name}: coverage mean {np.mean(cov):.3f} (min {min(cov):.3f}), agreement "
            f"{min(agr, default=float('nan')):.3f}-{max(agr, default=float('nan')):.3f}, "
            f"predict p50 {np.median([r.get('predict_p50_ms', np.nan) for r in arm]):.3f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
