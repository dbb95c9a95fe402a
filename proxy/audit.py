"""Live audit: a share of handled requests is also asked of the teacher, in the background.

Calibration says the surrogate agrees with the teacher at least α of the time on
the traffic it was calibrated on; the audit checks that the promise holds on live
traffic, and the task falls back to the teacher on clear evidence that it does not
(label drift, a changed teacher).

The evidence is a CUSUM of bets against "agreement ≥ α". Before each audit the
detector stakes a share λ of its evidence on a disagreement, sized from recent
audits (nothing while they agree at α or better); an audit multiplies the evidence
by ``1 + λ(α - agrees)``, and the CUSUM restarts from 1 whenever the evidence falls
below it, so a long good run does not mute a later drift. While the promise holds
every factor has mean at most 1, and the mean number of audits before a false
fallback is at least the threshold, ``FALSE_ALARM_AUDITS / (1 - confidence)``
(40,000 at confidence 0.95), however often the evidence is looked at. A rule that
checks a fixed-level confidence bound after every audit has no such guarantee: on
a model whose live agreement sits exactly at α it falls back within 20,000 audits
in most runs (bench/drift.py).

A live lower bound below α is not a reason: the gate puts the threshold where the
calibration's lower bound just clears α, so on as many audits as calibration traces
the live lower bound falls below α about half the time with nothing wrong. It is
exported as a gauge, for a human to read.

It stays on the teacher until a refit passes the gate and a new version is served.
Audit answers are stored as traces too, so training does not see deferred traffic only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from scipy.stats import beta

WINDOW = 2000  # audits behind the live agreement gauges
FALSE_ALARM_AUDITS = 2000  # the drift threshold is this over (1 - confidence)
BET_WINDOW = 200  # recent audits that size the drift detector's bet
BET_PRIOR_AUDITS = 20  # ... shrunk towards α as if by this many audits at α
MAX_IN_FLIGHT = 64  # audits beyond this are skipped (and counted), never queued


def sampling_rate(floor: float, boost: int, sampled: int) -> float:
    """The share of served traffic sent to the teacher as a sample, given the traces so far.

    Only sampled traces may calibrate a refit, and once a model serves they come from
    this rate alone. At a flat rate a young task's calibration pool grows so slowly that
    its first model caps its successors; at ``boost / sampled`` the pool grows like
    the square root of the traffic (the sampled share falls as ``1 / sqrt``), so
    early refits certify on fresh evidence and a mature task pays about ``floor``.
    """
    if boost <= 0:
        return floor
    return max(floor, min(1.0, boost / max(sampled, 1)))


def clopper_pearson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided (lower, upper) bounds, each holding with probability ``confidence``."""
    if n == 0:
        return 0.0, 1.0
    delta = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(beta.ppf(delta, successes, n - successes + 1))
    upper = 1.0 if successes == n else float(beta.ppf(1 - delta, successes + 1, n - successes))
    return lower, upper


class DriftDetector:
    """CUSUM of bets against "live agreement ≥ α": the evidence that it fell below."""

    def __init__(self, alpha: float, confidence: float) -> None:
        self.alpha = alpha
        self.threshold = FALSE_ALARM_AUDITS / (1.0 - confidence)
        self.log_evidence_ = 0.0
        self._recent: deque[bool] = deque(maxlen=BET_WINDOW)

    def bet(self) -> float:
        """The stake on a disagreement: Kelly's for the recent agreement, shrunk to α.

        Betting nothing while recent audits agree at α or better keeps the evidence
        from eroding on a good model; the cap loses at most half of it on one agreement.
        """
        prior = BET_PRIOR_AUDITS
        agreement = (sum(self._recent) + self.alpha * prior) / (len(self._recent) + prior)
        kelly = (self.alpha - agreement) / (self.alpha * (1.0 - self.alpha))
        return min(max(kelly, 0.0), 0.5 / (1.0 - self.alpha))

    def add(self, agrees: bool) -> None:
        stake = self.bet()
        factor = 1.0 + stake * (self.alpha - float(agrees))
        self.log_evidence_ = max(self.log_evidence_, 0.0) + math.log(factor)
        self._recent.append(agrees)

    @property
    def score(self) -> float:
        """The evidence as a share of the threshold, on a log scale: 1 means fall back."""
        return max(self.log_evidence_, 0.0) / math.log(self.threshold)

    @property
    def drifted(self) -> bool:
        return self.score >= 1.0


@dataclass
class AuditWindow:
    """The audits of one served version of one task: recent agreement and drift evidence."""

    version: str
    alpha: float
    confidence: float
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    drift: DriftDetector = field(init=False)

    def __post_init__(self) -> None:
        self.drift = DriftDetector(self.alpha, self.confidence)

    def add(self, agrees: bool) -> None:
        self.outcomes.append(agrees)
        self.drift.add(agrees)

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def agreement(self) -> float | None:
        return sum(self.outcomes) / self.n if self.n else None

    def bounds(self) -> tuple[float, float]:
        return clopper_pearson(sum(self.outcomes), self.n, self.confidence)

    def verdict(self) -> str | None:
        """Why the task must fall back to the teacher, or None while the promise holds."""
        if not self.drift.drifted:
            return None
        return (
            f"live agreement {self.agreement:.3f} on {self.n} audits: the evidence that it "
            f"fell below the target {self.alpha} reached the drift threshold (a false "
            f"alarm at most once in {self.drift.threshold:,.0f} audits on average)"
        )
