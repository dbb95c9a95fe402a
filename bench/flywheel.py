"""The flywheel on Banking77 (issue 4): coverage and agreement day by day, through the proxy.

Banking77's train split (10,003 rows, shuffled with a fixed seed) is streamed through the
proxy 2,000 requests a day. The teacher is the labels: a simulated teacher answers each
input with its Banking77 label, at 0 ms latency. At each day's end the proxy's refit loop
fits on every trace stored so far (the teacher's answers to the requests it was sent),
behind the parity gate at alpha = 0.95, confidence 0.95. The machinery is `tracer demo`'s
(``proxy.sim.demo``): an in-process proxy, the official openai client, refits called directly.

    .venv/bin/python bench/flywheel.py
    .venv/bin/python bench/flywheel.py --per-day 2000 --days 5 --concurrency 16

Targets: coverage >= 80% by day 4; agreement on handled traffic >= 0.95 every day.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console  # noqa: E402

from proxy.sim.demo import run  # noqa: E402
from proxy.sim.flywheel import Day, Settings, load_rows, percentile  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "banking77"
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx-int8"
TARGET_COVERAGE, COVERAGE_BY_DAY, TARGET_AGREEMENT = 0.80, 4, 0.95


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(days: Sequence[Day], wall_s: float) -> None:
    print()
    print(
        "| day | requests | coverage | agreement handled | agreement all | model served "
        "| teacher calls (audits) | traces so far | refit at day's end |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    traces = 0
    for d in days:
        traces += d.teacher_calls
        r = d.refit
        refit = "-" if r is None else f"{r.version} {r.outcome} ({d.refit_seconds:.0f} s)"
        if r is not None and r.outcome != "deployed" and r.reason:
            refit += f": {r.reason}"
        print(
            f"| {d.day} | {d.requests} | {fmt(d.coverage)} | {fmt(d.agreement_handled)} | "
            f"{fmt(d.agreement)} | {', '.join(d.versions) or 'none'} | "
            f"{d.teacher_calls} ({d.audits}) | {traces} | {refit} |"
        )
    handled = [o.seconds for d in days for o in d.outcomes if o.decision == "handled"]
    print(f"\nwall time {wall_s:.0f} s; handled p50 {fmt(percentile(handled, 0.5), 4)} s "
          "(openai client, shared cores; see bench/handled.py)")  # fmt: skip
    by_day = [d for d in days if d.day >= COVERAGE_BY_DAY]
    cov_ok = bool(by_day) and all(d.coverage >= TARGET_COVERAGE for d in by_day)
    agreements = [d.agreement_handled for d in days if d.agreement_handled is not None]
    agr_ok = all(a >= TARGET_AGREEMENT for a in agreements)
    print(f"coverage >= {TARGET_COVERAGE:.0%} from day {COVERAGE_BY_DAY}: "
          f"{'met' if cov_ok else 'missed'}; agreement on handled >= {TARGET_AGREEMENT} "
          f"every day: {'met' if agr_ok else 'missed'}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--per-day", type=int, default=2000)
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--min-coverage", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the store and artifacts here")
    p.add_argument(
        "--horizon",
        type=int,
        default=1500,
        help="tasks[].horizon: promise alpha on the next N handled requests (about a "
        "day's handled traffic; 0: on average)",
    )
    p.add_argument(
        "--audit-boost",
        type=int,
        default=1000,
        help="tasks[].audit_boost: sample min(1, N / sampled traces) of served traffic "
        "(at least the 2%% audit rate); 0: the flat audit rate",
    )
    p.add_argument(
        "--embedder",
        default=str(MINILM) if MINILM.is_dir() else "tfidf",
        help="the task's embedder (default: the shared MiniLM encoder when present)",
    )
    args = p.parse_args(argv)
    s = Settings(
        per_day=args.per_day,
        days=args.days,
        teacher_latency_ms=0.0,
        concurrency=args.concurrency,
        target=args.target,
        min_coverage=args.min_coverage,
        embedder=args.embedder,
        horizon=args.horizon,
        audit_boost=args.audit_boost,
    )
    rows = load_rows(args.data, s.per_day * s.days, args.seed)
    print(f"{len(rows)} rows of {args.data}, {s.per_day} a day, alpha {s.target}, "
          f"embedder {s.embedder}, horizon {s.horizon}, audit_boost {s.audit_boost}")  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tracer-flywheel-") as tmp:
        workdir = Path(args.workdir or tmp)
        days, _ = run(rows, s, workdir, Console(stderr=True))
    report(days, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
