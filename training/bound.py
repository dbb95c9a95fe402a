"""Threshold calibration with a finite-sample bound (Clopper-Pearson).

The thresholds form a fixed grid on [0, 1] that does not depend on data,
tested in sequence from strict to loose: at each threshold, H0 "agreement on
accepted inputs < alpha" is rejected when the one-sided Clopper-Pearson lower
bound at confidence 1 - delta reaches alpha. Testing stops at the first
threshold that is not rejected (fixed-sequence testing: no multiple-testing
penalty), and the loosest rejected threshold is returned.

The sequence starts at the first grid threshold that accepts at least
`max(min_testable(alpha, delta), start_count)` calibration inputs: below
`min_testable` even perfect agreement cannot reach alpha, and among the few
most confident inputs a single disagreement (a teacher's slip, say) would end
the sequence at a useless coverage. The fit passes `start_count` = half the
largest of the minimum coverage and the coverages certified and reached
empirically at alpha on the validation split, which is independent of
calibration. (The start depends on
calibration counts only, not on agreement; the repeated-split check in
docs/benchmarks.md measures the guarantee empirically.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

from router.stats import cp_lower, min_testable

clopper_pearson_lower = cp_lower  # the one implementation lives in router.stats


def threshold_grid(size: int = 600) -> np.ndarray:
    """Fixed thresholds, strict to loose: fine near 1 where probabilities pile up."""
    log_part = 1.0 - np.logspace(-6, 0, size // 2)
    lin_part = np.linspace(1.0, 0.0, size - size // 2)
    grid = np.unique(np.concatenate([log_part, lin_part, [1.0, 0.0]]))[::-1]
    return grid


@dataclass
class Calibration:
    """Outcome of the fixed-sequence test on the calibration split."""

    threshold: float | None  # None: no threshold certified
    n: int
    accepted: int
    coverage: float
    agreement: float | None
    lower_bound: float | None
    tested: int
    best_empirical_coverage: float  # largest coverage with empirical agreement >= alpha
    best_empirical_agreement: float | None
    overall_agreement: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _accepted(
    scores: np.ndarray, correct: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores sorted high to low, cumulative agreements, accepted and agreeing counts
    at each grid threshold)."""
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    c_cum = np.concatenate([[0], np.cumsum(correct[order])])
    counts = np.searchsorted(-s_sorted, -grid, side="right")  # scores >= each threshold
    return s_sorted, c_cum, counts, c_cum[counts]


def bounded_coverage(
    scores: np.ndarray, correct: np.ndarray, alpha: float, delta: float
) -> tuple[float, float | None]:
    """The largest coverage at a grid threshold whose lower bound reaches alpha, and the
    agreement there.

    No fixed sequence: the threshold is picked after looking, so this certifies
    nothing. Validation uses it to choose a model and to foretell whether calibration
    will certify; a fixed sequence there would end at the first slip among the
    `min_testable` most confident inputs, and refuse a good model for it."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    _, _, counts, agree = _accepted(scores, np.asarray(correct, dtype=bool), threshold_grid())
    ok = (counts >= min_testable(alpha, delta)) & (cp_lower(agree, counts, delta) >= alpha)
    if n == 0 or not ok.any():
        return 0.0, None
    best = int(np.flatnonzero(ok)[np.argmax(counts[ok])])
    return float(counts[best] / n), float(agree[best] / counts[best])


def calibrate(
    scores: np.ndarray,
    correct: np.ndarray,
    alpha: float,
    delta: float,
    grid: np.ndarray | None = None,
    start_count: int = 0,
) -> Calibration:
    """Choose the loosest certified threshold; `scores` of -inf are never accepted."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    grid = threshold_grid() if grid is None else grid
    s_sorted, c_cum, counts, agree = _accepted(scores, correct, grid)
    lbs = clopper_pearson_lower(agree, counts, delta)
    n_min = max(min_testable(alpha, delta), start_count)
    chosen = None
    tested = 0
    for j in range(len(grid)):
        if counts[j] < n_min:
            continue
        tested += 1
        if lbs[j] >= alpha:
            chosen = j
        else:
            break
    # best reachable without the bound, for refusal reports
    k_all = np.arange(1, n + 1)
    emp = c_cum[1:] / k_all if n else np.array([])
    finite = np.isfinite(s_sorted)
    ok = np.flatnonzero((emp >= alpha) & finite) if n else np.array([], dtype=int)
    best_cov = float((ok.max() + 1) / n) if len(ok) else 0.0
    best_agr = float(emp[ok.max()]) if len(ok) else None
    overall = float(correct.mean()) if n else 0.0
    if chosen is None:
        return Calibration(None, n, 0, 0.0, None, None, tested, best_cov, best_agr, overall)
    m = int(counts[chosen])
    return Calibration(
        float(grid[chosen]),
        n,
        m,
        m / n,
        float(agree[chosen] / m),
        float(lbs[chosen]),
        tested,
        best_cov,
        best_agr,
        overall,
    )


def batch_target(alpha: float, delta: float, horizon: int) -> tuple[float, float]:
    """(alpha', delta') that make alpha hold on the next `horizon` handled inputs.

    Certifying the population agreement p >= alpha still leaves any finite batch
    of handled inputs below alpha about half the time when p sits at alpha. To
    promise "at least alpha on a batch of `horizon`" with probability 1 - delta,
    split delta in two: certify p >= alpha' at delta / 2, where alpha' is the
    smallest rate whose batch of `horizon` falls below alpha with probability at
    most delta / 2 (binomial tail; a union bound over the two failures).
    `horizon` 0 keeps the population promise: (alpha, delta).
    """
    if horizon <= 0:
        return alpha, delta
    half = delta / 2.0
    need = math.ceil(alpha * horizon - 1e-9)  # agreements the batch needs
    lo, hi = alpha, 1.0
    for _ in range(60):  # bisection: binom.cdf(need - 1, horizon, p) falls as p grows
        mid = (lo + hi) / 2.0
        if binom.cdf(need - 1, horizon, mid) <= half:
            hi = mid
        else:
            lo = mid
    return hi, half


def start_count_for(n: int, min_coverage: float) -> int:
    """Where the fixed sequence starts: half of `coverage` (see the module doc)."""
    return math.ceil(0.5 * min_coverage * n)
