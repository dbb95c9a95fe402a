"""The flywheel on Banking77, over several shuffles: does the promise hold day by day?

Banking77's train split is shuffled with a seed and streamed through the proxy 2,000
requests a day for 4 days by 16 concurrent openai clients. The teacher (simulated)
answers each input with its label exactly as the data set spells it. The proxy runs
as a new user would run it: `refit.min_new_traces: 1000`, alpha 0.95, confidence 0.95,
candidates compared with the served version on fresh traffic, live checks on. Time is
compressed: the refit rule is checked every 100 requests, and a due fit runs before
traffic goes on (`proxy.sim.flywheel`).

Agreement is exact equality of the handled answer with the teacher's answer.

    .venv/bin/python bench/flywheel.py --seeds 0-9
    .venv/bin/python bench/flywheel.py --seeds 3 --days 4 --embedder tfidf

Targets (issue 16): at most delta of the (run, day) pairs below alpha; day-4 coverage
>= 0.80 in every run, median >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console  # noqa: E402

from proxy.sim.demo import run  # noqa: E402
from proxy.sim.flywheel import Day, Settings, load_rows  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "banking77"
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx-int8"


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def one_run(seed: int, s: Settings, data: str, keep: str | None) -> dict[str, Any]:
    rows = load_rows(data, s.per_day * s.days, seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tracer-flywheel-") as tmp:
        workdir = Path(keep) / f"seed{seed}" if keep else Path(tmp)
        days, fly = run(rows, s, workdir, Console(stderr=True, quiet=True))
        history = fly.history() if hasattr(fly, "history") else []
    return {
        "seed": seed,
        "wall_s": time.monotonic() - started,
        "days": [day_figures(d) for d in days],
        "fits": [
            {k: r[k] for k in ("version", "outcome", "n_traces", "reason", "attempt", "delta")}
            for r in history
        ],
    }


def day_figures(d: Day) -> dict[str, Any]:
    return {
        "day": d.day,
        "requests": d.requests,
        "coverage": d.coverage,
        "agreement_handled": d.agreement_handled,
        "handled": d.handled,
        "versions": d.versions,
        "teacher_calls": d.teacher_calls,
        "audits": d.audits,
        "fallback": d.fallback,
    }


def report(runs: list[dict[str, Any]], alpha: float, delta: float, days: int) -> None:
    for r in runs:
        print(f"\n### seed {r['seed']} ({r['wall_s']:.0f} s)\n")
        print("| day | coverage | agreement handled | versions served | teacher calls (audits) |")
        print("|---|---|---|---|---|")
        for d in r["days"]:
            served = ", ".join(d["versions"]) or "none"
            calls = f"{d['teacher_calls']} ({d['audits']})"
            agreement = fmt(d["agreement_handled"])
            print(f"| {d['day']} | {fmt(d['coverage'])} | {agreement} | {served} | {calls} |")
        fits = "; ".join(
            f"{f['version']} {f['outcome']} (k={f['attempt']}, {f['n_traces']} traces)"
            for f in r["fits"]
        )
        print(f"\nfits: {fits or 'none'}")
    pairs = [(r["seed"], d) for r in runs for d in r["days"] if d["agreement_handled"] is not None]
    below = [
        (seed, d["day"], d["agreement_handled"])
        for seed, d in pairs
        if d["agreement_handled"] < alpha
    ]
    last = [r["days"][-1]["coverage"] for r in runs if len(r["days"]) >= days]
    print("\n## summary\n")
    print(f"runs {len(runs)}; (run, day) pairs with handled traffic {len(pairs)}; below alpha "
          f"{alpha}: {len(below)} ({len(below) / max(len(pairs), 1):.3f}; target <= delta = "
          f"{delta}) {below}")  # fmt: skip
    if last:
        print(f"day-{days} coverage: min {min(last):.3f}, median {statistics.median(last):.3f} "
              f"(targets: >= 0.80 in every run, median >= 0.85); all: "
              f"{', '.join(f'{c:.3f}' for c in last)}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--seeds", default="0-9", help="shuffles to run: 0-9, or 1,4,7")
    p.add_argument("--per-day", type=int, default=2000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--min-coverage", type=float, default=0.1)
    p.add_argument("--min-new-traces", type=int, default=1000)
    p.add_argument("--growth", type=float, default=None, help="refit.growth (default: the proxy's)")
    p.add_argument("--horizon", type=int, default=0, help="tasks[].horizon (0: on average)")
    p.add_argument("--audit-boost", type=int, default=1000)
    p.add_argument(
        "--embedder",
        default=str(MINILM) if MINILM.is_dir() else "tfidf",
        help="the task's embedder (default: the shared MiniLM encoder when present)",
    )
    p.add_argument("--json", help="also write every run's figures to this file")
    p.add_argument("--keep", help="keep each run's store and artifacts under this folder")
    args = p.parse_args(argv)
    s = Settings(
        per_day=args.per_day,
        days=args.days,
        teacher_latency_ms=0.0,
        concurrency=args.concurrency,
        target=args.target,
        confidence=args.confidence,
        min_coverage=args.min_coverage,
        embedder=args.embedder,
        horizon=args.horizon,
        audit_boost=args.audit_boost,
        min_new_traces=args.min_new_traces,
        growth=args.growth,
    )
    growth = "default" if s.growth is None else s.growth
    print(f"{args.data}: {s.per_day} a day for {s.days} days, alpha {s.target}, confidence "
          f"{s.confidence}, min_new_traces {s.min_new_traces}, embedder {s.embedder}, "
          f"horizon {s.horizon}, audit_boost {s.audit_boost}, growth {growth}, "
          f"{s.concurrency} clients")  # fmt: skip
    runs = []
    for seed in seeds(args.seeds):
        runs.append(one_run(seed, s, args.data, args.keep))
        d = runs[-1]["days"]
        coverage = " ".join(fmt(x["coverage"]) for x in d)
        agreement = " ".join(fmt(x["agreement_handled"]) for x in d)
        print(f"seed {seed}: coverage {coverage}; agreement {agreement}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    report(runs, s.target, round(1 - s.confidence, 6), s.days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
