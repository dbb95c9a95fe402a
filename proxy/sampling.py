"""Which requests the teacher also answers, so later refits and live checks have evidence.

Only traces sampled independently of a model's decision may calibrate a refit or
judge a version: audits of handled requests and `explore` draws of deferred ones,
taken at one rate. The rate is the largest of:

- `tasks[].audit_rate`, the floor a mature task pays (2%);
- `audit_boost / sampled traces so far`: a young task samples much of its traffic,
  so its pool of calibration traces grows like the square root of the traffic and
  early refits certify on fresh evidence;
- `probation_boost / (audits of the served version + 1)`: a new version proves
  itself on live traffic within hours, not weeks;
- `probation_boost / (fresh traces + 1)` while a candidate waits to be compared with
  the served version (`proxy.promotion`), until it has `MIN_FRESH` of them: the same
  schedule as a new version's probation, so a candidate is settled within a bounded
  amount of traffic however low the floor: about `b + (MIN_FRESH^2 - b^2) / 2b`
  requests on average with b = `probation_boost` (520 at the default 40; at a 2%
  floor alone, 10,000). Each draw is still independent of the request and of any
  model's decision: the rate depends only on counts of earlier traces;
- 1, while a traffic-shift alarm wants fresh evidence (`proxy.monitor`).

The rate is read on every request, so it reads only memory: the counts behind it are
re-read from the store by the background poll (`count`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from router.traces import ARGUMENTS_ONLY, TRAIN_ONLY, Source

from . import store
from .config import Config, TaskConfig
from .metrics import Metrics
from .monitor import Monitor
from .refit import MIN_FRESH


def sampling_rate(floor: float, boost: int, sampled: int) -> float:
    """The task-level rate: `floor`, raised to boost / sampled while that is higher."""
    if boost <= 0:
        return floor
    return max(floor, min(1.0, boost / max(sampled, 1)))


@dataclass
class Waiting:
    """A task's newest candidate and the fresh traces it has to be judged on so far."""

    version: str
    after: int  # the last trace id of its data: fresh traces come after it
    fresh: int


class SamplingPolicy:
    def __init__(
        self,
        config: Config,
        engine: AsyncEngine,
        metrics: Metrics,
        monitor: Monitor,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.monitor = monitor
        self.rng = rng or random.Random()
        self.sampled: dict[str, int] = {}  # valid traces that sample the traffic, by task
        self._counted: dict[str, tuple[int, int]] = {}  # (count, through trace id)
        # Audits drawn here for each served version: the store's count lags by a poll.
        self._drawn: dict[tuple[str, str], int] = {}
        # Candidates still collecting fresh traces, by task (re-read by `count`).
        self.waiting: dict[str, Waiting] = {}

    def rate(self, task: TaskConfig) -> float:
        rate = sampling_rate(task.audit_rate, task.audit_boost, self.sampled.get(task.name, 0))
        waiting = self.waiting.get(task.name)
        if waiting is not None and task.probation_boost > 0 and waiting.fresh < MIN_FRESH:
            rate = max(rate, min(1.0, task.probation_boost / (waiting.fresh + 1)))
        checks = self.monitor.tasks.get(task.name)
        if checks is not None and checks.check is not None:
            if task.probation_boost > 0:
                drawn = self._drawn.get((task.name, checks.check.version), 0)
                audits = max(checks.version_audits, drawn)
                rate = max(rate, min(1.0, task.probation_boost / (audits + 1)))
            if checks.shift_sampling:
                rate = 1.0
        return rate

    def draw(self, task: TaskConfig, version: str | None = None) -> bool:
        """Sample this request? With the served `version`, it is an audit of it."""
        drawn = self.rng.random() < self.rate(task)
        if drawn and version is not None:
            key = (task.name, version)
            self._drawn[key] = self._drawn.get(key, 0) + 1
        return drawn

    def source(self, task: TaskConfig, routed_by_model: bool) -> Source:
        """How a teacher answer was sampled: a deferred request is the model's hard case
        (`deferred`) except for a share drawn at the sampling rate (`explore`)."""
        if not routed_by_model:
            return "teacher"
        return "explore" if self.draw(task) else "deferred"

    def stored(self, task: TaskConfig, source: str) -> None:
        """A valid trace was written: one more sample, if it was drawn independently."""
        if source != TRAIN_ONLY:
            self._set(task, self.sampled.get(task.name, 0) + 1)
        waiting = self.waiting.get(task.name)
        if waiting is not None and source not in (TRAIN_ONLY, ARGUMENTS_ONLY):
            waiting.fresh += 1  # stored after the candidate was: fresh (recounted at a poll)

    async def count(self) -> None:
        """Re-read the sampled-trace counts, which other workers' traces also move.

        Counted on from the last trace id seen, so a poll reads only new rows (a store
        whose ids commit out of order, as Postgres sequences may, can be undercounted
        by a few: the rate is a schedule, not a guarantee).
        """
        for task in self.config.tasks:
            counted, through = self._counted.get(task.name, (0, 0))
            new, through = await store.count_sampled(self.engine, task.name, after_id=through)
            self._counted[task.name] = (counted + new, through)
            await self._count_waiting(task)
            self._set(task, counted + new)

    async def _count_waiting(self, task: TaskConfig) -> None:
        """The task's newest pending candidate, and how many fresh traces it has: the
        ones `Promotion.check` will judge it on (after its data, sampled independently
        of any model). Counted until there are `MIN_FRESH`; then the boost is over."""
        pending = await store.pending_candidates(self.engine, task.name)
        if not pending:
            self.waiting.pop(task.name, None)
            return
        version, after = str(pending[-1]["version"]), int(pending[-1]["last_trace_id"])
        known = self.waiting.get(task.name)
        if known is not None and known.version == version and known.fresh >= MIN_FRESH:
            return
        fresh = await store.count_fresh(self.engine, task.name, after)
        self.waiting[task.name] = Waiting(version, after, fresh)

    def _set(self, task: TaskConfig, count: int) -> None:
        self.sampled[task.name] = count
        self.metrics.sampling_rate.labels(task.name).set(self.rate(task))
