"""The live audit's statistics: bounds, the sampling schedule and the drift detector."""

from __future__ import annotations

import random

from proxy.audit import AuditWindow, clopper_pearson, sampling_rate


def test_bounds():
    lower, upper = clopper_pearson(95, 100, 0.95)
    assert 0.89 < lower < 0.95 < upper < 0.99
    assert clopper_pearson(0, 0, 0.95) == (0.0, 1.0)


def audits(agreement: float, n: int, rng: random.Random) -> list[bool]:
    return [rng.random() < agreement for _ in range(n)]


def first_verdict(window: AuditWindow, outcomes: list[bool]) -> int | None:
    for i, agrees in enumerate(outcomes, 1):
        window.add(agrees)
        if window.verdict() is not None:
            return i
    return None


def test_a_short_run_of_disagreements_is_not_drift():
    window = AuditWindow("v1", alpha=0.95, confidence=0.95)
    assert first_verdict(window, [True, False, False]) is None
    assert window.drift.score < 0.2
    # Agreement exactly at the target, in a fixed pattern: nothing to bet on.
    assert first_verdict(window, ([True] * 19 + [False]) * 1000) is None


def test_no_false_fallback_at_or_just_above_the_target():
    """Looked at after every audit, yet silent over 20,000 audits of a model at α."""
    rng = random.Random(7)
    for agreement in (0.95, 0.957, 0.97):
        for _ in range(3):
            window = AuditWindow("v1", alpha=0.95, confidence=0.95)
            assert first_verdict(window, audits(agreement, 20_000, rng)) is None


def test_drift_after_a_long_good_run_is_caught():
    rng = random.Random(8)
    for after, within in ((0.0, 40), (0.5, 120), (0.85, 1500)):
        window = AuditWindow("v1", alpha=0.95, confidence=0.95)
        assert first_verdict(window, audits(0.97, 10_000, rng)) is None
        caught = first_verdict(window, audits(after, 5000, rng))
        assert caught is not None and caught <= within, (after, caught)
        assert window.drift.score >= 1.0
        verdict = window.verdict()
        assert verdict is not None and "drift threshold" in verdict and "40,000" in verdict


def test_sampling_rate_is_boosted_while_sampled_traces_are_few():
    assert sampling_rate(0.02, 1000, 0) == 1.0
    assert sampling_rate(0.02, 1000, 800) == 1.0
    assert sampling_rate(0.02, 1000, 4000) == 0.25
    assert sampling_rate(0.02, 1000, 10**6) == 0.02  # a mature task pays the floor
    assert sampling_rate(0.02, 0, 10) == 0.02
    assert sampling_rate(0.0, 0, 10) == 0.0
