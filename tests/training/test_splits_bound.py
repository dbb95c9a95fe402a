from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from training.bound import (
    batch_target,
    bounded_coverage,
    calibrate,
    clopper_pearson_lower,
    min_testable,
    threshold_grid,
)
from training.splits import stratified_split

FRACTIONS = {"fit": 0.6, "validation": 0.15, "calibration": 0.15, "test": 0.1}


def _labels(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"c{int(i)}" for i in rng.integers(0, 7, 2000)] + ["rare"] * 3


def test_splits_disjoint_complete_stratified_reproducible() -> None:
    labels = _labels()
    a = stratified_split(labels, FRACTIONS, seed=1)
    b = stratified_split(labels, FRACTIONS, seed=1)
    c = stratified_split(labels, FRACTIONS, seed=2)
    allidx = np.concatenate(list(a.values()))
    assert len(allidx) == len(labels) == len(set(allidx.tolist()))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["calibration"], c["calibration"])
    arr = np.array(labels)
    for cls in set(labels) - {"rare"}:
        n_cls = (arr == cls).sum()
        for name, frac in FRACTIONS.items():
            got = (arr[a[name]] == cls).sum()
            assert abs(got - frac * n_cls) <= 1.0


def test_clopper_pearson_known_values() -> None:
    # k == n: the bound is delta ** (1 / n)
    assert clopper_pearson_lower(100, 100, 0.05) == pytest.approx(0.05 ** (1 / 100))
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    # 95 / 100 at 95%: 0.8977 (textbook value)
    assert clopper_pearson_lower(95, 100, 0.05) == pytest.approx(0.8977, abs=1e-4)
    assert min_testable(0.95, 0.05) == 59


def test_grid_is_strict_to_loose() -> None:
    g = threshold_grid()
    assert g[0] == 1.0 and g[-1] == 0.0 and np.all(np.diff(g) < 0)


def test_calibrate_refuses_without_signal_and_certifies_with_it() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(1500)
    assert calibrate(scores, rng.random(1500) < 0.5, 0.95, 0.05).threshold is None
    good = rng.random(1500) < np.where(scores > 0.3, 0.995, 0.3)
    cal = calibrate(scores, good, 0.95, 0.05, start_count=150)
    assert cal.threshold is not None and cal.lower_bound >= 0.95
    assert 0.5 < cal.coverage < 0.8
    # -inf scores (OOD) are never accepted
    cal2 = calibrate(np.where(scores > 0.9, -np.inf, scores), good, 0.95, 0.05, start_count=150)
    assert cal2.coverage <= 0.9


def test_validation_coverage_survives_one_early_slip() -> None:
    """A fixed sequence ends at a slip among the most confident inputs; the coverage
    validation chooses and foretells by does not (it certifies nothing)."""
    n, delta = 500, 0.003
    scores = np.linspace(1.0, 0.0, n, endpoint=False)
    good = scores > 0.2  # the top 80% agree with the teacher...
    good[3] = False  # ...but for one slip among the first min_testable (about 113)
    assert calibrate(scores, good, 0.95, delta).coverage == 0.0
    coverage, agreement = bounded_coverage(scores, good, 0.95, delta)
    assert 0.75 < coverage <= 0.85 and agreement is not None and agreement >= 0.95
    assert bounded_coverage(scores, np.arange(n) % 2 == 0, 0.95, delta) == (0.0, None)
    assert bounded_coverage(scores[:0], good[:0], 0.95, delta) == (0.0, None)


def test_bound_holds_over_repeated_calibrations() -> None:
    """Share of calibrations whose true agreement above the threshold is < alpha <= delta."""
    rng = np.random.default_rng(1)
    alpha, delta, n = 0.9, 0.1, 600

    def p_correct(s: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * s**0.5

    big = rng.random(200_000)
    big_p = p_correct(big)
    failures = 0
    runs = 150
    for _ in range(runs):
        s = rng.random(n)
        cal = calibrate(s, rng.random(n) < p_correct(s), alpha, delta, start_count=60)
        if cal.threshold is None:
            continue
        true_agreement = big_p[big >= cal.threshold].mean()
        failures += true_agreement < alpha
    assert failures / runs <= delta + 0.05


def test_batch_target_keeps_a_batch_at_alpha() -> None:
    assert batch_target(0.95, 0.05, 0) == (0.95, 0.05)
    alpha, delta = batch_target(0.95, 0.05, 1000)
    assert delta == 0.025 and 0.955 < alpha < 0.97
    need = 950  # agreements a batch of 1000 needs
    assert binom.cdf(need - 1, 1000, alpha) <= 0.025 < binom.cdf(need - 1, 1000, alpha - 1e-3)
    # Longer batches vary less, so they need less margin.
    assert batch_target(0.95, 0.05, 5000)[0] < alpha
    # Simulated: batches drawn at the certified rate fall below 0.95 at most delta/2 of the time.
    rng = np.random.default_rng(0)
    below = (rng.binomial(1000, alpha, size=20000) < need).mean()
    assert below <= 0.025 + 0.005
