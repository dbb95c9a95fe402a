"""The refit loop: fit when enough new traces arrived, behind the gate, spending delta.

Every worker runs the loop, but a lease in the store lets only one of them fit a
given task at a time. The fit runs in a child process (`python -P -m
proxy.refit_worker`): a crash or a refusal there leaves the served model as it was.

**A promise over the task's life.** The k-th fit of a task certifies at
delta_k = delta * 6 / (pi^2 k^2), and these sum to delta: by a union bound, the
chance that any version ever served was certified above its true agreement stays
at most delta, however many refits follow (training/bound.py states the argument).

A fit that passes the gate is served at once when nothing else is (or the task is
in fallback). Otherwise it becomes a candidate, which `proxy.promotion` compares
with the served version on fresh traffic before either is preferred.

**Judged at once.** A fit that will be a candidate leaves out the newest `MIN_FRESH`
fresh traces (sampled independently of any model) and records its data cut just
before them: they arrived after the served version's data and are in no split of
the candidate, so they are the fresh traffic it is judged on, with no wait. Traces
after the cut that can never judge (`deferred`, `narrowed`, `import`) still train it.
When fewer fresh traces than that arrived since the last fit, nothing is left out
and the candidate waits for its fresh traffic as below.

**A candidate is settled before the next fit.** It is judged only on sampled traces
that arrived after its data, and a newer fit supersedes it, restarting that wait: if
fits came faster than fresh samples, no candidate would ever be judged, and each
would still spend its share of delta. So while a candidate waits, the next fit waits
too (`RefitLoop.due`), and the sampling rate is raised until it has its fresh traces
(`proxy.sampling`). The wait is bounded by the traffic: once the task has gained as
many traces since the candidate's data as the candidate was fitted on, a fit on
twice the data goes ahead and supersedes it. So a task whose candidates cannot get
their evidence (sampling boost off, a tiny floor) still gets fits, each on at least
twice the data of the last, as few as the log of its traffic; and as the traffic
between fits grows, the fixed amount a candidate needs for its evidence is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from router.manifest import Manifest
from router.settings import FitOptions
from router.traces import Trace

from . import store
from .config import Config, TaskConfig, fit_options
from .metrics import Metrics
from .models import LiveModels, ModelStore
from .monitor import Monitor
from .refit_worker import FAILED, REFUSED

log = logging.getLogger("tracer.refit")

Outcome = Literal[
    "deployed", "refused", "not_better", "failed", "skipped", "candidate", "rejected", "superseded"
]
LEASE_TTL_S = 30 * 60.0
POLL_S = 2.0
SHIFT_REFIT_TRACES = 200  # after a shift or a demotion, refit on this many new traces
MIN_FRESH = 200  # fresh traces a candidate is judged on (`proxy.promotion`)


def delta_share(attempt: int) -> float:
    """The share of delta the k-th fit of a task may spend: 6 / (pi^2 k^2)."""
    return 6.0 / (math.pi**2 * max(attempt, 1) ** 2)


def _whole_spent(manifest: Manifest | None, options: FitOptions) -> float:
    """What a tool task's fit spent of the whole-call budget: as recorded; none when the
    gate refused the names (whole calls come after); else (a crash) all it was allowed,
    so the budget is never overspent."""
    if manifest is None:
        return options.whole_delta / 2
    section = manifest.raw.get("tools")
    recorded = section.get("whole_delta_spent") if isinstance(section, dict) else None
    if isinstance(recorded, int | float):
        return float(recorded)
    return 0.0 if manifest.status == "refused" else options.whole_delta / 2


@dataclass(frozen=True)
class RefitOutcome:
    outcome: Outcome
    version: str | None = None
    reason: str | None = None


class RefitLoop:
    def __init__(
        self,
        config: Config,
        engine: AsyncEngine,
        models: LiveModels,
        metrics: Metrics,
        monitor: Monitor,
    ) -> None:
        self.config = config
        self.engine = engine
        self.models = models
        self.store: ModelStore = models.store
        self.metrics = metrics
        self.monitor = monitor
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_attempt: dict[str, float] = {}
        self._fitting: set[str] = set()
        self._failures: dict[str, int] = {}  # failed refits in a row, by task

    async def tick(self) -> None:
        """One pass over the tasks: fit the ones that are due."""
        for task in self.config.tasks:
            if await self.due(task):
                await self.refit(task)

    async def due(self, task: TaskConfig) -> bool:
        """Is a fit of `task` due? Each fit spends a share of delta, so fits are spaced out
        by the traffic: the traces must have grown by `refit.growth` since the last fit,
        and by `refit.min_new_traces` too, or, once `refit.interval_seconds` passed, by
        any number (a slow task still gets fits). A demotion or a traffic shift asks for
        a fit on the new traffic as soon as `SHIFT_REFIT_TRACES` new traces are in.

        None of these while a candidate waits for its fresh traces (`waits_for`)."""
        if await self.waits_for(task) is not None:
            return False
        refit = self.config.refit
        last = await store.last_refit(self.engine, task.name)
        after = int(last["last_trace_id"]) if last else 0
        grown = math.ceil(refit.growth * int(last["n_traces"])) if last else 0
        new = await store.count_traces(self.engine, task.name, after_id=after)
        wanted = task.name in self.monitor.tasks and self.monitor.task(task.name).refit_wanted
        if wanted and new >= min(SHIFT_REFIT_TRACES, refit.min_new_traces):
            return True
        if new < max(1, grown):
            return False
        if new >= refit.min_new_traces:
            return True
        since = time.monotonic() - self._last_attempt.get(task.name, time.monotonic())
        self._last_attempt.setdefault(task.name, time.monotonic())
        return since >= refit.interval_seconds

    async def waits_for(self, task: TaskConfig) -> str | None:
        """The pending candidate that holds the task's next fit back, if any.

        A newer fit would supersede it before it is judged (`proxy.promotion`), so the
        task waits, while sampling is raised to bring its fresh traces in, until it is
        settled, or until the task has gained as many traces since the candidate's data
        as the candidate was fitted on: a fit on twice the data then goes ahead."""
        pending = await store.pending_candidates(self.engine, task.name)
        if not pending:
            return None
        newest = pending[-1]
        since = await store.count_traces(
            self.engine, task.name, after_id=int(newest["last_trace_id"])
        )
        return str(newest["version"]) if since < int(newest["n_traces"]) else None

    async def refit(self, task: TaskConfig) -> RefitOutcome:
        """One fit of one task, if this worker holds the lease."""
        if task.name in self._fitting:
            return RefitOutcome("skipped", reason="already fitting")
        if not await store.acquire_lease(self.engine, task.name, self.holder, LEASE_TTL_S):
            return RefitOutcome("skipped", reason="another worker holds the lease")
        self._fitting.add(task.name)
        self._last_attempt[task.name] = time.monotonic()
        try:
            return await self._refit_locked(task)
        finally:
            self._fitting.discard(task.name)
            await store.release_lease(self.engine, task.name, self.holder)

    async def _refit_locked(self, task: TaskConfig) -> RefitOutcome:
        started = time.monotonic()
        work = self.store.task_dir(task.name) / "work"
        work.mkdir(parents=True, exist_ok=True)
        traces_path = work / f"traces-{self.holder.replace(':', '_')}.jsonl"
        n, last_id = await self._export(task.name, traces_path, await self._judge_cut(task))
        version = self.store.next_version(task.name)
        if task.name in self.monitor.tasks:
            self.monitor.task(task.name).refit_wanted = False  # this fit answers the ask
        attempt = await store.refit_attempts(self.engine, task.name) + 1
        options = fit_options(task).with_(
            task=task.name, quiet=True, delta_share=delta_share(attempt)
        )
        if task.kind == "tools":
            whole_test = await store.whole_call_tests(self.engine, task.name) + 1
            options = options.with_(whole_delta_share=delta_share(whole_test))
        log.info("task %s: fitting %s on %d traces (fit %d, delta %.2g)",
                 task.name, version, n, attempt, options.delta)  # fmt: skip
        code, output = await self._run_worker(
            traces_path, self.store.version_dir(task.name, version), options.to_json(),
            work / f"{version}.log",
        )  # fmt: skip
        traces_path.unlink(missing_ok=True)
        manifest = self.store.manifest(task.name, version)
        # What the fit spent of delta: its share if it tested calibration (a crash may
        # have: count it), none if it was refused before.
        recorded = manifest.raw.get("delta_spent") if manifest is not None else None
        spent = float(recorded) if isinstance(recorded, int | float) else options.delta
        whole_spent = _whole_spent(manifest, options) if task.kind == "tools" else None
        if code == 0 and manifest is not None and manifest.deployed:
            result = await self._passed(task, version)
        elif code in (REFUSED, FAILED) and manifest is not None:
            outcome: Outcome = "refused" if code == REFUSED else "failed"
            reason = manifest.refusal.reason if manifest.refusal else outcome
            result = RefitOutcome(outcome, version, reason)
        else:
            result = RefitOutcome("failed", version, f"fit exited with {code}: {output[-500:]}")
        self._count(task, result)
        await store.record_refit(
            self.engine,
            task=task.name,
            outcome=result.outcome,
            version=result.version,
            n_traces=n,
            last_trace_id=last_id,
            reason=result.reason,
            seconds=time.monotonic() - started,
            attempt=attempt,
            delta=spent,
            whole_delta=whole_spent,
        )
        return result

    async def _passed(self, task: TaskConfig, version: str) -> RefitOutcome:
        """Serve a version that passed the gate now, or hold it as a candidate."""
        live = self.models.get(task.name)
        if await asyncio.to_thread(self.models.store.pinned, task.name):
            return RefitOutcome(
                "candidate", version,
                "passed the gate; the task is pinned (`tracer models unpin` lets it be judged)",
            )  # fmt: skip
        if live is not None and self.monitor.fallback_reason(task.name) is None:
            return RefitOutcome(
                "candidate", version,
                f"passed the gate; compared with {live.version} on fresh traffic before serving",
            )  # fmt: skip
        try:
            await deploy(self.models, task.name, version)
        except Exception as exc:  # a bad artifact must not take the served one down
            return RefitOutcome("failed", version, f"could not serve: {exc}")
        return RefitOutcome("deployed", version)

    def _count(self, task: TaskConfig, result: RefitOutcome) -> None:
        self.metrics.refits.labels(task.name, result.outcome).inc()
        failures = self._failures[task.name] = (
            self._failures.get(task.name, 0) + 1 if result.outcome == "failed" else 0
        )
        self.metrics.refit_failures.labels(task.name).set(failures)
        log.log(
            logging.INFO if result.outcome in ("deployed", "candidate") else logging.WARNING,
            "task %s: refit %s %s%s%s", task.name, result.version, result.outcome,
            f" ({result.reason})" if result.reason else "",
            f"; {failures} failed refits in a row" if failures > 1 else "",
        )  # fmt: skip

    async def _judge_cut(self, task: TaskConfig) -> int | None:
        """Where a fit that will be a candidate ends its fresh data (see the module doc);
        None for a fit that will be served at once, or judged by no one (pinned)."""
        if self.models.get(task.name) is None or self.monitor.fallback_reason(task.name):
            return None
        if await asyncio.to_thread(self.models.store.pinned, task.name):
            return None
        last = await store.last_refit(self.engine, task.name)
        after = int(last["last_trace_id"]) if last else 0
        return await store.fresh_cut(self.engine, task.name, MIN_FRESH, after)

    async def _export(self, task: str, path: Path, cut: int | None) -> tuple[int, int]:
        """Write the fit's traces; (how many, its data cut). After `cut`, only traces that
        can never judge a version are written."""
        n, last_id = 0, 0
        with path.open("w", encoding="utf-8") as out:
            async for row in store.iter_traces(self.engine, task):
                after_cut = cut is not None and int(row["id"]) > cut
                if after_cut and store.is_fresh(row["source"]):
                    continue
                trace = Trace(row["input"], row["label"], row["source"], row["raw_output"])
                out.write(trace.to_json() + "\n")
                n += 1
                last_id = int(row["id"])
        return n, last_id if cut is None else cut

    async def _run_worker(
        self, traces: Path, out_dir: Path, options: str, log_path: Path
    ) -> tuple[int, str]:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                # -P: the working directory is not on the child's import path, so a
                # user's own training.py or router/ there cannot stand in for ours.
                sys.executable, "-P", "-m", "proxy.refit_worker",
                str(traces), str(out_dir), options,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
                raise
        return code, log_path.read_text(encoding="utf-8", errors="replace")


async def deploy(models: LiveModels, task: str, version: str) -> None:
    """Point the task at `version` and load it here; other workers follow the pointer."""
    await asyncio.to_thread(models.store.set_current, task, version)
    await asyncio.to_thread(models.refresh_task, task)
