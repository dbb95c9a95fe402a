"""The live checks: does the served version keep the promise on today's traffic?

Two sequential tests run for each served version (`proxy.evidence`), fed from the
store, so every worker and replica reaches the same verdict from the same rows:

- **agreement**: each audit (a served answer re-asked of the teacher) is evidence
  about the version's agreement. When the evidence that it is below the task's
  target reaches its threshold, the task falls back to the teacher, says why, and a
  refit on the new traffic is asked for. The chance that a version at or above the
  target is ever demoted this way is at most delta = 1 - confidence.
- **shift**: each decided request says whether its input was unusual: out of
  distribution, or scored below the accept score of calibration's least sure 5% of
  inputs (`Baseline`). When that share rises well above what calibration saw, the
  traffic no longer resembles the traces the certificate was computed on: the task
  samples every request for the teacher until the agreement test has fresh evidence,
  and asks for an early refit. Inputs the model is unsure of count because new kinds of
  input need not be far from every class (a question no tool answers, worded like
  those that one does).

A new version is on probation: its first audits are sampled at a high rate
(`tasks[].probation_boost`), so it proves itself on live traffic within hours.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from router.manifest import Calibration
from router.stats import cp_lower

from . import store
from .config import Config, TaskConfig
from .evidence import EDetector, agreement_test, shift_test
from .lane_certify import ANSWERS, CONFIRMS
from .lanes import TaskLanes
from .metrics import Metrics

log = logging.getLogger("tracer.monitor")

WINDOW = 2000  # recent audits behind the live-agreement gauges
SHIFT_SAMPLING = 200  # audits sampled at rate 1 after a shift alarm
SHIFT_HISTORY = 5000  # decisions a restarted monitor looks back on for the shift test


@dataclass(frozen=True)
class Baseline:
    """What calibration saw of its inputs: the `share` that were unusual."""

    share: float = 0.0
    low_accept: float | None = None  # None (an older artifact): out of distribution only

    @classmethod
    def of(cls, cal: Calibration | None) -> Baseline:
        if cal is None:
            return cls()
        if cal.low_accept is None or cal.unusual_share is None:
            return cls(cal.ood_share)
        return cls(cal.unusual_share, cal.low_accept)

    def unusual(self, ood: bool, accept_score: float | None) -> bool:
        low = self.low_accept
        return ood or (low is not None and accept_score is not None and accept_score < low)


@dataclass
class VersionCheck:
    """The live evidence about one served version of one task."""

    version: str
    agreement: EDetector
    shift: EDetector
    baseline: Baseline
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    verdict: str | None = None
    shift_alarm_at: int | None = None  # the audit count when shift was detected

    @property
    def audits(self) -> int:
        return self.agreement.n_

    @property
    def live_agreement(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


class TaskMonitor:
    def __init__(self, task: TaskConfig, metrics: Metrics) -> None:
        self.task = task
        self.metrics = metrics
        self.check: VersionCheck | None = None
        self.refit_wanted = False  # set on a demotion or a shift; the refit loop reads it

    @property
    def delta(self) -> float:
        return 1.0 - self.task.confidence

    def serve(self, version: str, baseline: Baseline) -> None:
        """A new version took traffic: its checks start from nothing."""
        self.check = VersionCheck(
            version,
            agreement_test(self.task.target, self.delta),
            shift_test(baseline.share, self.delta),
            baseline,
        )
        self.refit_wanted = False
        for gauge in (self.metrics.fallback, self.metrics.drift_score, self.metrics.shift_score):
            gauge.labels(self.task.name).set(0)

    def add_audit(self, version: str | None, agrees: bool) -> None:
        check = self.check
        if check is None or version != check.version:
            return  # an older version's audit says nothing about this one
        check.agreement.add(not agrees)
        check.recent.append(agrees)
        name = self.task.name
        self.metrics.live_agreement.labels(name).set(check.live_agreement or 0.0)
        agreed = sum(check.recent)
        lower = cp_lower(agreed, len(check.recent), self.delta)
        self.metrics.live_agreement_lower.labels(name).set(lower)
        self.metrics.drift_score.labels(name).set(check.agreement.score)
        self.metrics.version_audits.labels(name).set(check.audits)
        if check.verdict is None and check.agreement.alarmed:
            agreement = 1.0 - (check.agreement.rate or 0.0)
            check.verdict = (
                f"version {check.version}: live agreement {agreement:.3f} on {check.audits} "
                f"audits; the evidence that it is below the target "
                f"{self.task.target} reached its threshold (a version at the target is "
                f"demoted this way at most {self.delta:.0%} of the time, over its whole life)"
            )
            self.metrics.fallback.labels(name).set(1)
            self.refit_wanted = True
            log.warning("task %s: back to the teacher until a refit passes the gate: %s",
                        name, check.verdict)  # fmt: skip

    def add_decision(
        self, version: str | None, ood: bool | None, accept_score: float | None = None
    ) -> None:
        check = self.check
        if check is None or version != check.version or ood is None:
            return
        check.shift.add(check.baseline.unusual(ood, accept_score))
        self.metrics.shift_score.labels(self.task.name).set(check.shift.score)
        if check.shift_alarm_at is None and check.shift.alarmed:
            check.shift_alarm_at = check.audits
            self.refit_wanted = True
            log.warning(
                "task %s: traffic shift: %.1f%% of version %s's recent inputs are out of "
                "distribution or less sure than calibration's least sure (calibration "
                "expected at most %.1f%%); sampling every request for the teacher until %d "
                "more audits, and refitting on the new traffic",
                self.task.name, 100 * (check.shift.rate or 0), check.version,
                100 * check.shift.p0, SHIFT_SAMPLING,
            )  # fmt: skip

    @property
    def fallback_reason(self) -> str | None:
        return self.check.verdict if self.check is not None else None

    @property
    def version_audits(self) -> int:
        return self.check.audits if self.check is not None else 0

    @property
    def shift_sampling(self) -> bool:
        """True while a shift alarm wants every request sampled for the teacher."""
        check = self.check
        if check is None or check.shift_alarm_at is None:
            return False
        return check.audits < check.shift_alarm_at + SHIFT_SAMPLING


class Monitor:
    """The live checks of every task, fed from the store's audits and decisions."""

    def __init__(
        self,
        config: Config,
        engine: AsyncEngine,
        metrics: Metrics,
        lanes: Mapping[str, TaskLanes] | None = None,
    ) -> None:
        self.engine = engine
        self.tasks = {t.name: TaskMonitor(t, metrics) for t in config.tasks}
        self.lanes = dict(lanes or {})
        self._audit_id: dict[str, int] = {}
        self._decision_id: dict[str, int] = {}

    def task(self, name: str) -> TaskMonitor:
        return self.tasks[name]

    def fallback_reason(self, task: str) -> str | None:
        monitor = self.tasks.get(task)
        return monitor.fallback_reason if monitor is not None else None

    def serve(self, task: str, version: str, baseline: Baseline) -> None:
        """A swap: the version's checks are rebuilt from the store at the next poll."""
        self.tasks[task].serve(version, baseline)
        if task not in self.lanes:  # (lane checks, read in order once, are kept across swaps)
            self._audit_id[task] = 0  # its audits so far (after a restart) count too

    async def poll(self) -> None:
        for name, monitor in self.tasks.items():
            if monitor.check is None and name not in self.lanes:
                continue
            await self._read_audits(name, monitor)
            if monitor.check is not None:
                await self._read_decisions(name, monitor)

    async def _read_audits(self, name: str, monitor: TaskMonitor) -> None:
        while True:
            start = self._audit_id.get(name, 0)
            rows = await store.audits_after(self.engine, name, start)
            if self._audit_id.get(name, 0) != start:
                continue  # a swap while reading: its version's audits, from the start
            lanes = self.lanes.get(name)
            for row_id, version, lane, cluster, agrees, kind, text, answer in rows:
                if lane == "surrogate":
                    monitor.add_audit(version, agrees)
                elif lanes is not None and kind == "shadow":
                    lanes.add_check(lane, text or "", agrees, answer, version, cluster)
                elif lanes is not None:
                    mode = CONFIRMS if kind == "confirm" else ANSWERS
                    lanes.add_audit(lane, cluster, text or "", agrees, answer, mode, version)
                self._audit_id[name] = row_id
            if len(rows) < 10_000:
                return

    async def _read_decisions(self, name: str, monitor: TaskMonitor) -> None:
        if name not in self._decision_id:
            newest = await store.last_id(self.engine, "decisions", name)
            self._decision_id[name] = max(0, newest - SHIFT_HISTORY)
        while True:
            rows = await store.decisions_after(self.engine, name, self._decision_id[name])
            for row_id, version, ood, _decision, accept_score in rows:
                monitor.add_decision(version, ood, accept_score)
                self._decision_id[name] = row_id
            if len(rows) < 10_000:
                return
