"""Candidate against served version, judged on fresh traffic that neither has seen.

A refit that passes the gate while another version serves is a candidate. Choosing
between them must not use a figure the candidate was selected or calibrated on (it
is optimistic: the winner's curse), nor the served version's own calibration. Both
are scored, here, on the same sampled traces that arrived after the candidate's data
cut: audits, explore draws and teacher answers, a uniform sample of the traffic
that neither was fitted or calibrated on. The cut is the candidate's `last_trace_id`
(the newest trace its fit exported), so a trace after it is in no split of either
fit; `deferred` and `narrowed` traces (picked or labelled by the served version)
are never part of the sample.

- On a tool task, what a version answers itself is its whole calls: they are what is
  counted, and checked as calls; a name it would only narrow to is checked as a name.
- The candidate's answers on the traces it would handle feed the same sequential
  agreement test that guards a served version (`proxy.evidence`): if that test
  finds it below the target, it is rejected, before it serves anyone.
- Otherwise, once `MIN_FRESH` traces are in, the candidate is served unless the
  served version is clearly better. On each trace a version does one of three
  things, best first: answers the teacher's answer, defers, or answers another one.
  Among the traces where the two differ, the served version's share of the better
  outcomes is tested against a coin (a one-sided sign test at `WORSE_LEVEL`). So a
  version that answers more only by answering wrongly gains nothing by it, and a
  served version whose answers on this traffic agree below the target is never
  preferred. The candidate has seen more, and more recent, traffic, so a small
  difference on a few hundred traces, which is noise, goes its way; a clear one
  leaves it `not_better`.

A fit that will be a candidate usually leaves the newest `MIN_FRESH` fresh traces out
of its data (`proxy.refit`), so they are there to judge it at once. When fewer had
arrived, it waits for them: the task samples more of its traffic (`proxy.sampling`)
and fits no newer version (`proxy.refit`), so it is settled within a bounded amount
of traffic rather than superseded unjudged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from router import ArtifactError, Router
from router.chat import same_answer
from router.stats import binomial_cdf

from . import store
from .config import TaskConfig
from .evidence import agreement_test
from .metrics import Metrics
from .models import LiveModels
from .monitor import Monitor
from .refit import MIN_FRESH, RefitOutcome, deploy

log = logging.getLogger("tracer.refit")

MAX_FRESH = 5000
WORSE_LEVEL = 0.05


@dataclass(frozen=True)
class Comparison:
    n: int
    candidate_handled: int
    served_handled: int
    candidate_better: int  # traces where the candidate does better (`outcome`)
    served_better: int
    candidate_agreement: float | None
    rejected: bool
    served_agreement: float | None = None

    def served_below(self, target: float) -> bool:
        """The served version's own answers on this fresh traffic agree below `target`:
        what it answers more is then no reason to keep it."""
        return self.served_agreement is not None and self.served_agreement < target

    @property
    def served_clearly_better(self) -> bool:
        """One-sided sign test on the traces where the two do differently."""
        discordant = self.candidate_better + self.served_better
        return binomial_cdf(self.candidate_better, discordant) < WORSE_LEVEL


Rows = list[tuple[int, str, str | None, str | None]]  # (id, input, label, raw_output)
Verdict = tuple[bool, bool | None]  # (answered locally, agrees with the teacher or unchecked)


def outcome(verdict: Verdict) -> int:
    """2: answered the teacher's answer; 1: deferred; 0: answered another one."""
    local, agrees = verdict
    return 1 if not local else 2 if agrees else 0


def _agreement(verdicts: list[Verdict]) -> float | None:
    local = [bool(agrees) for is_local, agrees in verdicts if is_local]
    return sum(local) / len(local) if local else None


def compare(
    candidate: Router, served: Router, rows: Rows,
    target: float, delta: float, output_format: str, tools: bool = False,
) -> Comparison:  # fmt: skip
    """Score both routers on the fresh traces (blocking: run it in a thread).

    For a tool task, what a version answers itself is its whole calls, so they are
    what is counted and compared as calls; a name it would narrow to is checked
    against the teacher's tool (the name is what it certified) but not counted.
    """
    judge = _whole_calls if tools else _answers
    ours, theirs = judge(candidate, rows, output_format), judge(served, rows, output_format)
    test = agreement_test(target, delta)
    for _, agrees in ours:
        if agrees is not None:
            test.add(not agrees)
    pairs = [(outcome(a), outcome(b)) for a, b in zip(ours, theirs, strict=True)]
    return Comparison(
        n=len(rows),
        candidate_handled=sum(local for local, _ in ours),
        served_handled=sum(local for local, _ in theirs),
        candidate_better=sum(a > b for a, b in pairs),
        served_better=sum(b > a for a, b in pairs),
        candidate_agreement=_agreement(ours),
        rejected=test.alarmed,
        served_agreement=_agreement(theirs),
    )


def _answers(router: Router, rows: Rows, output_format: str) -> list[Verdict]:
    """Per trace: handled, and then whether the answer is the teacher's."""
    out: list[Verdict] = []
    for (_, _, label, raw), d in zip(rows, router.predict_batch([r[1] for r in rows]), strict=True):
        if not d.handled:
            out.append((False, None))
            continue
        said = raw if raw is not None else label or ""
        answer = router.manifest.answer(d.label)
        out.append((True, same_answer(answer, said, output_format)))  # type: ignore[arg-type]
    return out


def _whole_calls(router: Router, rows: Rows, output_format: str) -> list[Verdict]:
    """Per trace: a whole call, checked as a call; or a narrowed name, checked as a name."""
    caller = router.tools
    if caller is None:  # no tool section: it answers nothing itself
        return [(False, None)] * len(rows)
    out: list[Verdict] = []
    for (_, text, label, raw), d in zip(
        rows, router.predict_batch([r[1] for r in rows]), strict=True
    ):
        plan = caller.plan(d.label, d.accept_score, text) if d.handled else None
        if plan is not None and plan.kind == "whole":
            out.append((True, caller.key(plan) == raw))
        elif plan is not None and plan.kind == "narrow":
            out.append((False, d.label == label))
        else:
            out.append((False, None))
    return out


def _figure(agreement: float | None) -> str:
    return "-" if agreement is None else f"{agreement:.3f}"


class Promotion:
    def __init__(
        self, engine: AsyncEngine, models: LiveModels, metrics: Metrics, monitor: Monitor
    ) -> None:
        self.engine = engine
        self.models = models
        self.metrics = metrics
        self.monitor = monitor
        self._loaded: dict[tuple[str, str], Router] = {}

    async def check(self, task: TaskConfig) -> RefitOutcome | None:
        """Settle the newest candidate of a task if the evidence allows; older ones lose."""
        pending = await store.pending_candidates(self.engine, task.name)
        if not pending or await asyncio.to_thread(self.models.store.pinned, task.name):
            return None  # nothing to judge, or held where an operator put it
        *older, newest = pending
        for row in older:
            await store.settle_refit(
                self.engine, row["id"], "superseded", f"{newest['version']} is newer"
            )
        version = str(newest["version"])
        live = self.models.get(task.name)
        if live is None or self.monitor.fallback_reason(task.name) is not None:
            return await self._settle(task, newest, "deployed", "nothing else was served")
        after = int(newest["last_trace_id"])  # the candidate's data ends here
        if await store.count_fresh(self.engine, task.name, after) < MIN_FRESH:
            return None
        rows = await store.fresh_traces_after(self.engine, task.name, after, MAX_FRESH)
        try:
            candidate = await asyncio.to_thread(self._router, task.name, version)
        except ArtifactError as exc:
            return await self._settle(task, newest, "failed", f"could not load: {exc}")
        result = await asyncio.to_thread(
            compare, candidate, live.router, rows, task.target, 1.0 - task.confidence,
            task.output.format, task.kind == "tools",
        )  # fmt: skip
        return await self._judge(task, newest, live.version, result)

    async def _judge(
        self, task: TaskConfig, row: dict[str, Any], served: str, c: Comparison
    ) -> RefitOutcome:
        figures = (
            f"on {c.n} fresh traces it would handle {c.candidate_handled} "
            f"(agreement {_figure(c.candidate_agreement)}), {served} handles "
            f"{c.served_handled} (agreement {_figure(c.served_agreement)})"
        )
        if c.rejected:
            return await self._settle(
                task, row, "rejected", f"{figures}: its agreement is below the target {task.target}"
            )
        if not c.served_clearly_better or c.served_below(task.target):
            return await self._settle(task, row, "deployed", figures)
        return await self._settle(
            task, row, "not_better",
            f"{figures}: clearly better (on {c.served_better} traces it answers right where "
            f"the candidate defers, or defers where it answers wrongly, against "
            f"{c.candidate_better}); {served} stays",
        )  # fmt: skip

    async def _settle(
        self, task: TaskConfig, row: dict[str, Any], outcome: str, reason: str
    ) -> RefitOutcome:
        version = str(row["version"])
        if outcome == "deployed":
            try:
                await deploy(self.models, task.name, version)
            except Exception as exc:
                outcome, reason = "failed", f"could not serve: {exc}"
        await store.settle_refit(self.engine, int(row["id"]), outcome, reason)
        self.metrics.refits.labels(task.name, outcome).inc()
        self._loaded.pop((task.name, version), None)
        log.log(logging.INFO if outcome == "deployed" else logging.WARNING,
                "task %s: candidate %s %s: %s", task.name, version, outcome, reason)  # fmt: skip
        return RefitOutcome(outcome, version, reason)  # type: ignore[arg-type]

    def _router(self, task: str, version: str) -> Router:
        key = (task, version)
        if key not in self._loaded:
            self._loaded[key] = Router.load(self.models.store.version_dir(task, version))
        return self._loaded[key]
