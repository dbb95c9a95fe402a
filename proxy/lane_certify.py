"""One certification round of the lanes: which lane may answer which cluster's requests.

A lane serves a cluster in one of two modes, each certified on its own checks (`MODES`):

- **answers**: the lane answers every deferred request of the cluster; its checks are
  all the cluster's checks.
- **confirms**: the lane is asked, and its answer is served only when it is one of the
  surrogate's two guesses (its two most likely labels; it was not sure enough to answer
  alone); otherwise the teacher answers. Its checks are those where the lane's answer
  was a guess. Two models that err differently rarely land on the same wrong label, so
  this region is much purer than the cluster, and it needs no more than the lane being
  measured.

A round shares delta_r equally among the modes it can test (counts only), and runs the
procedure below once per mode, each at its share.

A round spends delta_r of the task's delta on two kinds of certificate, each a one-sided
Clopper-Pearson lower bound on agreement with the teacher that must reach alpha:

- **Per cluster** (delta_r / 2): each (cluster, lane) pair on its own checks, Bonferroni
  over the m pairs tested. Pairs whose count of checks could not pass even with no
  disagreement are not tested and not counted in m.
- **Per group** (delta_r / 2, shared equally by the lanes): a per-cluster certificate
  needs more than 100 checks in that one cluster at alpha = 0.95, which a young task
  does not have, so each lane is also certified for a group of clusters as a whole. The
  checks are split in two halves by a hash of their input. On the first half, each lane
  (cheapest first) ranks the clusters no cheaper lane picked by how well it agrees there,
  and picks the most of the best ones, each at least alpha there on its own, whose
  pooled bound passes with a margin (a set picked to only just pass on the first half
  would often fall short on the second); on the second half, one bound on its agreement
  over that set is tested. The choice never
  sees the data that tests it.

A kind of certificate with nothing it could pass (too few checks, whatever they say) is
not tested and spends nothing; if neither is, the round is not held. Every decision
about what to test and at which level depends on counts of checks only, never on
whether they agreed, so each test holds at its level, and delta_r sums to delta over
all rounds (`round_delta`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.stats import cp_lower, min_testable

MARGIN = 4  # a group is picked to pass at delta / MARGIN on its half, tested at delta

ANSWERS, CONFIRMS = "answers", "confirms"
MODES = (ANSWERS, CONFIRMS)  # in the order a request tries them: a lane alone goes first


@dataclass(frozen=True)
class Check:
    lane: str
    input: str
    agrees: bool
    answer: str | None = None  # the lane's label (None: none valid, or not recorded)
    routed: tuple[str, int] | None = None  # (version, cluster) the request was routed under


@dataclass
class Group:
    """A lane's group of clusters, picked on one half of the checks, tested on the other."""

    clusters: list[int]
    agreed: int
    n: int
    lower: float | None  # None: not tested (too few checks in the second half)
    certified: bool = False


@dataclass
class Certificate:
    """One round's outcome: the lanes certified per cluster, cheapest first."""

    round: int
    delta: float
    n_checks: int
    tested: int = 0  # m, the per-cluster Bonferroni family
    lanes: dict[int, list[str]] = field(default_factory=dict)
    figures: dict[tuple[int, str], tuple[int, int, float | None]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)


def round_delta(delta: float, r: int) -> float:
    return delta * 6.0 / (math.pi**2 * r**2)


def first_half(text: str) -> bool:
    """Which half of the checks an input falls in: fixed by its text, not by its outcome."""
    return hashlib.blake2b(text.encode(), digest_size=1).digest()[0] % 2 == 0


Tally = dict[tuple[int, str], list[int]]


def _tally(checks: Sequence[Check], clusters: Sequence[int | None], half: bool | None) -> Tally:
    counts: Tally = {}
    for check, cluster in zip(checks, clusters, strict=True):
        if cluster is not None and (half is None or first_half(check.input) == half):
            tally = counts.setdefault((cluster, check.lane), [0, 0])
            tally[0] += check.agrees
            tally[1] += 1
    return counts


def _family(sizes: Sequence[int], alpha: float, delta: float) -> int:
    """The smallest m such that at most m pairs have the checks to pass at delta / m."""
    m = 1
    while m < len(sizes) and sum(n >= min_testable(alpha, delta / m) for n in sizes) > m:
        m += 1
    return m


def _testable(
    checks: Sequence[Check],
    clusters: Sequence[int | None],
    lanes: Sequence[str],
    alpha: float,
    delta: float,
) -> tuple[bool, list[str]]:
    whole = _tally(checks, clusters, None)
    pairs = any(n >= min_testable(alpha, delta) for _, n in whole.values())
    second = _tally(checks, clusters, False)
    per_lane = {lane: sum(n for (_, ln), (_, n) in second.items() if ln == lane) for lane in lanes}
    grouped = [lane for lane in lanes if per_lane[lane] >= min_testable(alpha, delta)]
    return pairs, grouped


def testable(
    checks: Sequence[Check],
    clusters: Sequence[int | None],
    lanes: Sequence[str],
    alpha: float,
    delta_r: float,
) -> bool:
    """Whether a round at delta_r could certify anything at all, from the counts alone."""
    pairs, grouped = _testable(checks, clusters, lanes, alpha, delta_r / 2)
    return pairs or bool(grouped)


def certify(
    checks: Sequence[Check],
    clusters: Sequence[int | None],
    lanes: Sequence[str],
    alpha: float,
    delta_r: float,
    round_: int,
) -> Certificate | None:
    """Round `round_` at level delta_r; None when it could certify nothing (it spends none).

    `clusters` gives each check's cluster (None: not a lane's to serve); `lanes` are
    cheapest first.
    """
    pairs, grouped = _testable(checks, clusters, lanes, alpha, delta_r / 2)
    if not pairs and not grouped:
        return None
    share = delta_r / 2 if pairs and grouped else delta_r
    cert = Certificate(round_, delta_r, len(checks))
    whole = _tally(checks, clusters, None)
    if pairs:
        _per_cluster(cert, whole, alpha, share)
    else:
        cert.figures = {pair: (a, n, None) for pair, (a, n) in whole.items()}
    if grouped:
        _per_group(cert, checks, clusters, lanes, grouped, alpha, share / len(grouped))
    order = {lane: i for i, lane in enumerate(lanes)}
    for cluster in cert.lanes:
        cert.lanes[cluster].sort(key=lambda lane: order.get(lane, len(order)))
    return cert


def _per_cluster(cert: Certificate, whole: Tally, alpha: float, delta: float) -> None:
    m = _family([n for _, n in whole.values()], alpha, delta)
    floor = min_testable(alpha, delta / m)
    cert.tested = m
    for (cluster, lane), (agreed, n) in whole.items():
        lower = float(cp_lower(agreed, n, delta / m)) if n >= floor else None
        cert.figures[(cluster, lane)] = (agreed, n, lower)
        if lower is not None and lower >= alpha:
            cert.lanes.setdefault(cluster, []).append(lane)


def _per_group(
    cert: Certificate,
    checks: Sequence[Check],
    clusters: Sequence[int | None],
    lanes: Sequence[str],
    grouped: Sequence[str],
    alpha: float,
    delta: float,
) -> None:
    picking, testing = _tally(checks, clusters, True), _tally(checks, clusters, False)
    taken: set[int] = set()
    for lane in lanes:  # cheapest first: a cluster joins the cheapest lane that looks good
        picked = _pick(picking, lane, taken, alpha, delta)
        taken.update(picked)
        if lane not in grouped or not picked:
            continue
        agreed = sum(testing.get((c, lane), [0, 0])[0] for c in picked)
        n = sum(testing.get((c, lane), [0, 0])[1] for c in picked)
        lower = float(cp_lower(agreed, n, delta)) if n >= min_testable(alpha, delta) else None
        group = Group(picked, agreed, n, lower, lower is not None and lower >= alpha)
        cert.groups[lane] = group
        if group.certified:
            for cluster in picked:
                if lane not in cert.lanes.get(cluster, []):
                    cert.lanes.setdefault(cluster, []).append(lane)


def _pick(picking: Tally, lane: str, taken: set[int], alpha: float, delta: float) -> list[int]:
    """A lane's best clusters (ranked by first-half agreement, shrunk to 1/2 where checks
    are few): the most of them, each at least alpha on its own, whose pooled first-half
    bound reaches alpha with a margin (at delta / MARGIN: a set that only just passes on
    one half would often fall short on the other); failing that, the set whose bound is
    highest; none when even that bound is below alpha (the second half would not pass
    it either)."""
    rows = [(c, a, n) for (c, ln), (a, n) in picking.items() if ln == lane and c not in taken]
    rows.sort(key=lambda row: ((row[1] + 1) / (row[2] + 2), row[2]), reverse=True)
    best, size, widest = alpha, 0, 0
    agreed = total = 0
    each_good = True  # no cluster rides on the others: each looked good on its own
    for i, (_, a, n) in enumerate(rows):
        agreed, total = agreed + a, total + n
        lower = float(cp_lower(agreed, total, delta))
        if lower >= best:
            best, size = lower, i + 1
        each_good = each_good and a >= alpha * n
        if each_good and float(cp_lower(agreed, total, delta / MARGIN)) >= alpha:
            widest = i + 1
    return sorted(c for c, _, _ in rows[: widest or size])
