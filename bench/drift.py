"""The live agreement test: how fast a bad version is demoted, how rarely a good one is.

Audits are simulated as independent agree/disagree draws, fed to the proxy's test
(`proxy.evidence.agreement_test`, α = 0.95, δ = 0.05) and looked at after every audit,
as the proxy does.

- Demotion delay: a version whose agreement is below α from its first audit (a
  mis-certified version): the audits until it is demoted, median and 90th percentile
  over runs. The issue's target: a median of 400 or fewer at α − 0.03.
- Late drift: 10,000 audits at 0.97, then a drop: the audits from the drop.
- False demotions: the share of runs of `--audits` audits at α (and just above) in
  which the test fired. The target: at most δ over 100,000 audits.

    .venv/bin/python bench/drift.py
    .venv/bin/python bench/drift.py --runs 400 --audits 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.evidence import agreement_test

ALPHA, DELTA = 0.95, 0.05


def first_alarm(disagree: np.ndarray, skip: int = 0) -> int | None:
    """The audit (counted from `skip`) at which the test demotes, if it does."""
    test = agreement_test(ALPHA, DELTA)
    for i, event in enumerate(disagree.tolist(), 1):
        test.add(bool(event))
        if test.alarmed:
            return i - skip
    return None


def delays(
    agreement: float, runs: int, n: int, rng: np.random.Generator, before: int = 0
) -> list[float]:
    out = []
    for _ in range(runs):
        head = rng.random(before) >= 0.97
        tail = rng.random(n) >= agreement
        found = first_alarm(np.concatenate([head, tail]), skip=before)
        out.append(float("inf") if found is None or found < 0 else float(found))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--audits", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| agreement from the first audit | runs | median audits to demotion | p90 |")
    print("|---|---|---|---|")
    for agreement in (0.92, 0.90, 0.85, 0.80, 0.50, 0.0):
        d = delays(agreement, args.runs, 20_000, rng)
        print(f"| {agreement} | {args.runs} | {statistics.median(d):.0f} | "
              f"{np.percentile(d, 90):.0f} |")  # fmt: skip
    print("\n| after 10,000 audits at 0.97, agreement drops to | runs | median audits | p90 |")
    print("|---|---|---|---|")
    for agreement in (0.92, 0.80, 0.0):
        d = delays(agreement, max(args.runs // 4, 20), 20_000, rng, before=10_000)
        print(f"| {agreement} | {max(args.runs // 4, 20)} | {statistics.median(d):.0f} | "
              f"{np.percentile(d, 90):.0f} |")  # fmt: skip
    runs = f"runs of {args.audits:,} audits"
    print(f"\n| agreement | {runs} | falsely demoted | share (target <= {DELTA}) |")
    print("|---|---|---|---|")
    for agreement in (ALPHA, 0.957, 0.97):
        fired = sum(
            first_alarm(rng.random(args.audits) >= agreement) is not None for _ in range(args.runs)
        )
        print(f"| {agreement} | {args.runs} | {fired} | {fired / args.runs:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
