"""The live audit's drift rule: false fallbacks on a good model, and delay on a drifted one.

Audits are simulated as independent agree/disagree draws (α = 0.95, confidence 0.95),
and each rule is looked at after every audit, as the proxy does:

- ``cusum``: the proxy's rule (``proxy.audit.DriftDetector``), a CUSUM of bets against
  "agreement ≥ α" whose mean time to a false alarm is at least its threshold;
- ``per-look bound``: the rule it replaced, which fell back once at least 59 audits were
  in the window (the last 2,000) and their one-sided Clopper-Pearson upper bound was
  below α.

False fallbacks: the share of runs of ``--audits`` audits at a fixed agreement (at α,
and just above it, where the gate leaves a model) in which the rule fired. Delay: with
agreement 0.96 for 5,000 audits and then lower, the audits from the change to the
fallback (median and 90th percentile over runs; runs that fired before the change are
counted apart).

    .venv/bin/python bench/drift.py
    .venv/bin/python bench/drift.py --runs 200 --audits 20000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.audit import DriftDetector, clopper_pearson

ALPHA, CONFIDENCE = 0.95, 0.95
PREVIOUS_WINDOW, PREVIOUS_MIN_AUDITS = 2000, 59
CHANGE_AT = 5000

Rule = Callable[[Iterable[bool]], int | None]


def cusum(outcomes: Iterable[bool]) -> int | None:
    """The audit at which the proxy's detector falls back, if it does."""
    detector = DriftDetector(ALPHA, CONFIDENCE)
    for i, agrees in enumerate(outcomes, 1):
        detector.add(agrees)
        if detector.drifted:
            return i
    return None


class PerLookBound:
    """The previous rule: upper confidence bound below α, checked after every audit."""

    def __init__(self) -> None:
        self._most_agreeing: dict[int, int] = {}  # window size -> most agreements that fire

    def most_agreeing(self, n: int) -> int:
        if n not in self._most_agreeing:
            low, high = -1, n  # the upper bound grows with the agreements: bisect
            while low < high:
                mid = (low + high + 1) // 2
                if clopper_pearson(mid, n, CONFIDENCE)[1] < ALPHA:
                    low = mid
                else:
                    high = mid - 1
            self._most_agreeing[n] = low
        return self._most_agreeing[n]

    def __call__(self, outcomes: Iterable[bool]) -> int | None:
        window: deque[bool] = deque(maxlen=PREVIOUS_WINDOW)
        agreeing = 0
        for i, agrees in enumerate(outcomes, 1):
            if len(window) == PREVIOUS_WINDOW:
                agreeing -= window[0]
            window.append(agrees)
            agreeing += agrees
            n = len(window)
            if n >= PREVIOUS_MIN_AUDITS and agreeing <= self.most_agreeing(n):
                return i
        return None


def stream(rng: random.Random, n: int, before: float, after: float | None = None):
    for i in range(n):
        rate = before if after is None or i < CHANGE_AT else after
        yield rng.random() < rate


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--audits", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rules: dict[str, Rule] = {"cusum": cusum, "per-look bound": PerLookBound()}
    print(f"α {ALPHA}, confidence {CONFIDENCE}, {args.runs} runs per row, seed {args.seed}\n")
    print(f"| live agreement | rule | runs with a false fallback within {args.audits:,} audits "
          "| median audit of the false fallback |")  # fmt: skip
    print("|---|---|---|---|")
    for agreement in (0.95, 0.957, 0.97):
        for name, rule in rules.items():
            rng = random.Random(args.seed)
            fired = [x for x in (rule(stream(rng, args.audits, agreement))
                                 for _ in range(args.runs)) if x is not None]  # fmt: skip
            median = f"{statistics.median(fired):,.0f}" if fired else "-"
            print(f"| {agreement} | {name} | {len(fired)}/{args.runs} | {median} |", flush=True)
    print(f"\n| agreement after audit {CHANGE_AT:,} (0.96 before) | rule | median delay (audits) "
          "| 90th percentile | fired before the change | never fired |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for after in (0.93, 0.90, 0.80, 0.50, 0.0):
        for name, rule in rules.items():
            rng = random.Random(args.seed)
            fired = [rule(stream(rng, CHANGE_AT + args.audits, 0.96, after))
                     for _ in range(args.runs)]  # fmt: skip
            early = sum(1 for x in fired if x is not None and x <= CHANGE_AT)
            never = sum(1 for x in fired if x is None)
            delays = sorted(x - CHANGE_AT for x in fired if x is not None and x > CHANGE_AT)
            median = f"{statistics.median(delays):,.0f}" if delays else "-"
            p90 = f"{delays[int(0.9 * (len(delays) - 1))]:,}" if delays else "-"
            print(f"| {after} | {name} | {median} | {p90} | {early} | {never} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
