"""The middle lane: cheaper LLMs that answer, per cluster of inputs, what the surrogate defers.

Each lane model is measured where it matters. Requests the teacher answers are also
sent to every lane model in the background (a *shadow* check), and a share of the
requests routed to a lane go to the teacher instead, with the lane asked alongside
(an *audit*). Either way the lane's answer, parsed with the task's rules and written
as the teacher writes that label, is compared with the teacher's.

- **Which checks count.** A lane serves what the served version defers and finds in
  distribution, so each round re-reads every check through that version: a check it
  would answer itself, or finds out of distribution, is left out; the rest fall in the
  cluster (`clusters.onnx`) the version assigns.
- **Certification rounds** (`lane_certify`): with each new served version (new
  clusters), and each time the checks have grown by half (by a tenth while the last
  round left no lane serving anywhere: an idle lane should not wait days for the next
  chance), a round reads every check so far and certifies lanes per cluster and per
  group of clusters. Round r spends
  delta * 6 / (pi^2 r^2) of the task's delta; a round that could certify nothing is not
  held and spends nothing. (Each worker reads the checks when its poll comes, so two
  workers' rounds may read a few checks more or less.)
- **Routing.** A deferred, in-distribution request goes to the cheapest lane certified
  to answer its cluster alone; else to the cheapest certified to confirm one of the
  surrogate's two guesses there (the teacher answers when it does not); otherwise to
  the teacher.
- **Keeping the lane honest.** Per (cluster, lane, mode), the sequential test that
  guards the surrogate reads the audits and demotes the lane from the cluster (in both
  modes) as soon as they show it below alpha. Its checks in that cluster from before
  the last round (as that round placed them, or as they were routed) no longer count in
  any later round, whatever the version; the audits since then, which demoted it, do.
  Its checks elsewhere still count: each cluster it serves has its own test, which
  demotes it there too if it drifted everywhere.
- **Only the teacher teaches**: lane answers never become traces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from router.stats import cp_interval

from .config import Config, ConfigError, TaskConfig
from .evidence import EDetector, agreement_test
from .lane_certify import (
    ANSWERS,
    CONFIRMS,
    MODES,
    Certificate,
    Check,
    certify,
    round_delta,
    testable,
)
from .pricing import Prices, prices

log = logging.getLogger("tracer.lanes")

Serving = tuple[int, str, str]  # (cluster, lane, mode): where a lane serves, and how
Guess = tuple[int | None, tuple[str, ...]]  # a check's cluster (None: not a lane's), guesses

ROUND_START = 200  # checks before the first certification round
GROWTH = 1.5  # a new round once the checks have grown this many times since the last
IDLE_GROWTH = 1.1  # the same while no lane serves anywhere (rounds stay logarithmic)
SHADOW_ALL = 5000  # every teacher answer is shadow-checked until there are this many checks
SHADOW_FLOOR = 0.05  # after that, min(1, SHADOW_ALL / checks), but at least this share


def lane_prices(config: Config, task: TaskConfig) -> list[tuple[str, Prices]]:
    """A task's lanes with their prices, cheapest first; ConfigError for an unpriced one."""
    if task.lanes and task.kind == "tools":
        raise ConfigError(
            f"task {task.name}: lanes answer classification tasks; a tool task's cheaper "
            "model is `narrow_to`, which fills the arguments of a tool already certain"
        )
    priced = []
    for name in task.lanes:
        entry = config.model(name)
        assert entry is not None  # the config validator checks the name
        found = prices(entry)
        if found is None:
            raise ConfigError(
                f"task {task.name}: lane {name!r} has no price: LiteLLM's price map does not "
                f"know {entry.litellm_params.model!r}; give its `model_info` "
                "`input_cost_per_token` and `output_cost_per_token` (or "
                "`input_cost_per_request`)"
            )
        priced.append((name, found))
    return sorted(priced, key=lambda item: item[1].typical())


class TaskLanes:
    """The lanes of one task: checks, the current certificates and the live demotions."""

    def __init__(self, task: TaskConfig, priced: Sequence[tuple[str, Prices]]) -> None:
        self.task = task
        self.lanes = [name for name, _ in priced]  # cheapest first
        self.prices = dict(priced)
        self.checks: list[Check] = []
        self.certificates: dict[str, Certificate] = {}  # mode -> the last round's certificate
        self.version: str | None = None
        self.round = 0  # rounds held (a round that could certify nothing is not counted)
        self.read = 0  # the checks the last round read
        self._audits: dict[Serving, EDetector] = {}
        self.demoted: set[Serving] = set()
        self._spent: dict[str, tuple[float, int]] = {}  # lane -> (USD, calls)
        self._where: list[int | None] = []  # each check's cluster in the last round
        self._stale: set[int] = set()  # checks of a lane in a cluster it was demoted from

    @property
    def delta(self) -> float:
        return 1.0 - self.task.confidence

    @property
    def certificate(self) -> Certificate | None:
        """The last round's certificate of lanes that answer alone."""
        return self.certificates.get(ANSWERS)

    def shadow_rate(self) -> float:
        return max(SHADOW_FLOOR, min(1.0, SHADOW_ALL / max(len(self.checks), 1)))

    def choose(self, cluster: int | None, mode: str = ANSWERS) -> str | None:
        """The cheapest lane certified for `cluster` in `mode` and not demoted there."""
        certificate = self.certificates.get(mode)
        if cluster is None or certificate is None:
            return None
        for lane in certificate.lanes.get(cluster, []):
            if (cluster, lane, mode) not in self.demoted:
                return lane
        return None

    def route(self, cluster: int | None) -> tuple[str, str] | None:
        """(lane, mode) for a deferred request of `cluster`: a lane alone first, else one
        that confirms the surrogate's guess; None: the teacher."""
        for mode in MODES:
            lane = self.choose(cluster, mode)
            if lane is not None:
                return lane, mode
        return None

    def paid(self, lane: str, usd: float | None) -> None:
        """A lane call's cost, to show what each lane costs per 1,000 calls."""
        if usd is not None:
            total, n = self._spent.get(lane, (0.0, 0))
            self._spent[lane] = (total + usd, n + 1)

    def per_1000(self, lane: str) -> float:
        """USD per 1,000 calls: the mean of the calls made, else a typical call's price."""
        total, n = self._spent.get(lane, (0.0, 0))
        return 1000 * (total / n if n else self.prices[lane].typical())

    def add_check(
        self,
        lane: str,
        text: str,
        agrees: bool,
        answer: str | None = None,
        version: str | None = None,
        cluster: int | None = None,
    ) -> None:
        """A lane's answer against the teacher's; with the (version, cluster) the request
        was routed under, when it was routed to the lane."""
        if lane in self.prices:
            routed = (version, cluster) if version and cluster is not None else None
            self.checks.append(Check(lane, text, agrees, answer, routed))

    def add_audit(
        self,
        lane: str,
        cluster: int | None,
        text: str,
        agrees: bool,
        answer: str | None = None,
        mode: str = ANSWERS,
        version: str | None = None,
    ) -> None:
        """A lane's answer to a request routed to it (under `version`, by default the
        last round's), against the teacher's: a check for the next rounds, and evidence
        that may demote the lane from its cluster now."""
        version = version or self.version
        self.add_check(lane, text, agrees, answer, version, cluster)
        if cluster is None or lane not in self.prices:
            return
        serving = (cluster, lane, mode)
        test = self._audits.setdefault(serving, agreement_test(self.task.target, self.delta))
        test.add(not agrees)
        if test.alarmed and serving not in self.demoted:
            # A lane that drifted is not trusted in that cluster in any mode: what it
            # was certified on is no longer what it answers.
            self.demoted.update((cluster, lane, m) for m in MODES)
            self._stale.update(self._in_cluster(lane, cluster, version))
            log.warning("task %s: lane %s demoted from cluster %d (%s): its audits show it "
                        "below the target %s", self.task.name, lane, cluster, mode,
                        self.task.target)  # fmt: skip

    def _in_cluster(self, lane: str, cluster: int, version: str | None) -> list[int]:
        """The lane's checks the last round read that were in `cluster` of `version`:
        placed there by that round (when it was that version's), or routed there."""
        placed = self._where if version == self.version else [None] * self.read
        return [
            i
            for i, check in enumerate(self.checks[: self.read])
            if check.lane == lane and (placed[i] == cluster or check.routed == (version, cluster))
        ]

    def serving(self) -> bool:
        """Whether some lane serves some cluster now (certified, not demoted)."""
        return any(
            (cluster, lane, mode) not in self.demoted
            for mode, certificate in self.certificates.items()
            for cluster, lanes in certificate.lanes.items()
            for lane in lanes
        )

    def due(self, version: str | None) -> bool:
        """A new version (new clusters), or half as many checks again as the last round
        read (a tenth more while no lane serves)."""
        n = len(self.checks)
        if version is None or n < ROUND_START:
            return False
        growth = GROWTH if self.serving() else IDLE_GROWTH
        return version != self.version or n >= growth * self.read

    def recertify(self, version: str, assign: Callable[[list[str]], list[Guess]]) -> None:
        """A round on every check so far, `assign` giving each one's cluster and the
        surrogate's guesses under `version` (a blocking call: run it off the event loop)."""
        read = len(self.checks)
        kept = [i for i in range(read) if i not in self._stale]
        used = [self.checks[i] for i in kept]
        guesses = assign([c.input for c in used])
        where: list[int | None] = [None] * read
        for i, (cluster, _) in zip(kept, guesses, strict=True):
            where[i] = cluster
        regions = {
            ANSWERS: [cluster for cluster, _ in guesses],
            CONFIRMS: [
                cluster if check.answer is not None and check.answer in guessed else None
                for check, (cluster, guessed) in zip(used, guesses, strict=True)
            ],
        }
        r = self.round + 1
        delta_r, alpha = round_delta(self.delta, r), self.task.target
        modes = [m for m in MODES if testable(used, regions[m], self.lanes, alpha, delta_r / 2)]
        certificates: dict[str, Certificate] = {}
        share = delta_r / max(1, len(modes))
        for mode in modes:
            certificate = certify(used, regions[mode], self.lanes, alpha, share, r)
            if certificate is not None:
                certificates[mode] = certificate
        if modes:
            self.round = r
        elif version == self.version:
            certificates = self.certificates  # nothing new could pass: the last round stands
        self.certificates, self.version, self.read = certificates, version, read
        self._where = where
        self._audits, self.demoted = {}, set()
        certified = {m: sum(map(len, c.lanes.values())) for m, c in certificates.items()}
        log.info("task %s: lane round on %d checks (version %s): (cluster, lane) pairs "
                 "certified by mode: %s", self.task.name, len(used), version,
                 certified)  # fmt: skip

    def cards(self) -> list[dict[str, object]]:
        """Per cluster, lane and mode: agreement with its interval, the bound, the outcome."""
        out: list[dict[str, object]] = []
        for mode, certificate in self.certificates.items():
            for (cluster, lane), (agreed, n, lower) in sorted(certificate.figures.items()):
                out.append(
                    {
                        "cluster": cluster,
                        "lane": lane,
                        "mode": mode,
                        "checks": n,
                        "agreement": agreed / n if n else None,
                        "interval": cp_interval(agreed, n),
                        "certified_lower_bound": lower,
                        "certified": lane in certificate.lanes.get(cluster, []),
                        "in_group": cluster
                        in getattr(certificate.groups.get(lane), "clusters", []),
                        "demoted": (cluster, lane, mode) in self.demoted,
                        "serving": self.route(cluster) == (lane, mode),
                        "usd_per_1000_calls": self.per_1000(lane),
                    }
                )
        return out
