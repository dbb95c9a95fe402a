"""Sequential tests that stay valid however often they are looked at, over a whole life.

The live checks ask one question again and again: has the rate of bad events (a
served answer that disagrees with the teacher; an input out of distribution) risen
above what the certificate allows? A confidence bound looked at after every event
would cry wolf sooner or later. Here the evidence is a likelihood ratio, a test
martingale under the null, and Ville's inequality bounds the chance that it ever
crosses 1/delta.

One martingale started at the first event is the most powerful against a drop that
is there from the start (a mis-certified new version), but after a long good run it
sits far below 1 and would be slow to see a drop that comes late. So a new
martingale also starts every `block` events; the one started at block j must reach
1 / (w_j delta), with weights w_0 = `first_weight` and w_j = (1 - w_0) 6 / (pi^2 j^2)
after, which sum to 1. By Ville and a union bound over the starts, the chance of
any false alarm, ever, is at most delta.

On a task at alpha = 0.95 and delta = 0.05, a version whose agreement is 0.92 is
caught after a median of about 340 audits, one at 0.80 after about 45 and one that
never agrees after 6; of 400 runs of 100,000 audits at exactly alpha, 4.5% raised a
false alarm (`bench/drift.py` measures these).
"""

from __future__ import annotations

import math

FIRST_WEIGHT = 0.8
BLOCK = 500


class EDetector:
    """Evidence that a Bernoulli event's rate exceeds `p0`, designed for `p1` > `p0`.

    Each event multiplies a martingale by p1/p0 (event) or (1-p1)/(1-p0) (none), so
    it grows fastest when the true rate is p1 and shrinks while it is p0 or less.
    """

    def __init__(
        self,
        p0: float,
        p1: float,
        delta: float,
        block: int = BLOCK,
        first_weight: float = FIRST_WEIGHT,
    ) -> None:
        if not 0.0 < p0 < p1 < 1.0:
            raise ValueError("need 0 < p0 < p1 < 1")
        self.p0, self.p1, self.delta = p0, p1, delta
        self.block = block
        self.first_weight = first_weight
        self.up = math.log(p1 / p0)
        self.down = math.log((1.0 - p1) / (1.0 - p0))
        self.n_ = 0
        self.events_ = 0
        self._log_total = 0.0  # the sum of every increment so far
        self._starts: list[tuple[float, float]] = []  # (total before the start, threshold)
        self._best = (
            -math.inf
        )  # max over starts of (-base - threshold): alarm when total + best >= 0

    def threshold(self, j: int) -> float:
        """log(1 / (w_j delta)): what the martingale started at block j must reach."""
        if j == 0:
            weight = self.first_weight
        else:
            weight = (1.0 - self.first_weight) * 6.0 / (math.pi**2 * j * j)
        return math.log(1.0 / (weight * self.delta))

    def add(self, event: bool) -> None:
        if self.n_ % self.block == 0:
            start = (self._log_total, self.threshold(self.n_ // self.block))
            self._starts.append(start)
            self._best = max(self._best, -start[0] - start[1])
        self._log_total += self.up if event else self.down
        self.n_ += 1
        self.events_ += event

    @property
    def alarmed(self) -> bool:
        return self._log_total + self._best >= 0.0

    @property
    def score(self) -> float:
        """How far the most advanced martingale has gone to its threshold: 1 is an alarm."""
        if not self._starts:
            return 0.0
        return max(0.0, max((self._log_total - base) / th for base, th in self._starts))

    @property
    def rate(self) -> float | None:
        return self.events_ / self.n_ if self.n_ else None


def agreement_test(alpha: float, delta: float, drop: float = 0.03) -> EDetector:
    """H0: agreement >= alpha, against agreement = alpha - drop (events: disagreements)."""
    disagree = 1.0 - alpha
    return EDetector(disagree, min(disagree + drop, 0.999), delta)


def shift_test(expected: float, delta: float) -> EDetector:
    """H0: the out-of-distribution share is at most what calibration saw (with slack),
    against three times as much: new kinds of input arriving."""
    p0 = min(max(expected * 1.5, 0.01), 0.3)
    return EDetector(p0, min(max(3.0 * p0, p0 + 0.03), 0.95), delta)
