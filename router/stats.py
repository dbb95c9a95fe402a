"""Clopper-Pearson bounds on a binomial rate: the one implementation.

The gate certifies thresholds with them, the live audit reports them, reports show
them as intervals, and lanes certify clusters with them. scipy is imported only
when a bound is computed, so importing `router` stays fast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def min_testable(alpha: float, delta: float) -> int:
    """The fewest trials whose lower bound can reach alpha: all agreeing, alpha^n <= delta."""
    return max(1, math.ceil(math.log(delta) / math.log(alpha)))


def _betaincinv(a: Any, b: Any, q: float) -> Any:
    from scipy.special import betaincinv

    return betaincinv(a, b, q)


def cp_lower(successes: Any, n: Any, delta: float) -> Any:
    """One-sided lower bound at level 1 - delta; 0 where there are no successes.

    Works elementwise on arrays (the gate's fixed sequence) and on plain ints.
    """
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = _betaincinv(k, m - k + 1, delta)
    out = np.where((k <= 0) | (m <= 0), 0.0, np.nan_to_num(bound, nan=0.0))
    return float(out) if out.ndim == 0 else out


def cp_upper(successes: int, n: int, delta: float) -> float:
    """One-sided upper bound at level 1 - delta; 1 where every trial succeeded."""
    if n <= 0 or successes >= n:
        return 1.0
    return float(_betaincinv(successes + 1, n - successes, 1.0 - delta))


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    from scipy.special import bdtr

    return float(bdtr(k, n, p))


def cp_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided interval at `confidence`; None for no trials."""
    if n <= 0:
        return None
    tail = (1.0 - confidence) / 2.0
    return float(cp_lower(successes, n, tail)), cp_upper(successes, n, tail)
