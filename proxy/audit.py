"""Live audit: a share of handled requests is also asked of the teacher, in the background.

Calibration says the surrogate agrees with the teacher at least α of the time on
the traffic it was calibrated on; the audit checks that the promise holds on live
traffic. Over a window of recent audits of the served version, the task falls
back to the teacher when the upper confidence bound on agreement is below α: clear
evidence that the surrogate now disagrees more than allowed (label drift, a changed
teacher). The rule waits for as many audits as it takes to certify α at all (59 at
α and confidence 0.95): the bound is looked at after every audit, and fewer cannot
tell drift from a short run of hard inputs.

A live lower bound below α is not a reason: the gate puts the threshold where the
calibration's lower bound just clears α, so on as many audits as calibration traces
the live lower bound falls below α about half the time with nothing wrong (a model
at 0.967 live agreement was dropped so in a flywheel run). It is exported as a
gauge, for a human to read.

It stays on the teacher until a refit passes the gate and a new version is served.
Audit answers are stored as traces too, so training does not see deferred traffic only.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

from scipy.stats import beta

log = logging.getLogger("tracer.audit")

WINDOW = 2000
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


def min_certifying_samples(alpha: float, confidence: float) -> int:
    """The fewest audits at which perfect agreement clears α at this confidence."""
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(alpha)))


@dataclass
class AuditWindow:
    """The recent audits of one served version of one task."""

    version: str
    alpha: float
    confidence: float
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, agrees: bool) -> None:
        self.outcomes.append(agrees)

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
        if self.n < min_certifying_samples(self.alpha, self.confidence):
            return None
        _, upper = self.bounds()
        if upper >= self.alpha:
            return None
        return (
            f"live agreement {self.agreement:.3f} on {self.n} audits: upper bound {upper:.3f} "
            f"is below the target {self.alpha}"
        )
