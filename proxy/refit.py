"""The background refit loop: fit when enough new traces arrived, swap behind the gate.

Every worker runs the loop, but a lease in the store lets only one of them fit a
given task at a time; the others see the new pointer on disk and load it. The fit
itself runs in a child process: a crash or a refusal there leaves the served
model as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from . import store
from .config import Config, TaskConfig
from .metrics import Metrics
from .models import LiveModels, ModelStore
from .refit_worker import FAILED, REFUSED

log = logging.getLogger("tracer.refit")

LEASE_TTL_S = 30 * 60.0
POLL_S = 2.0
# A refit that certifies at most this much less coverage still replaces the served
# model: it has seen more, and more recent, traces.
NOT_WORSE_BY = 0.01
# Requests a served model must have decided before its live coverage is trusted.
MIN_DECIDED = 500


@dataclass(frozen=True)
class RefitOutcome:
    outcome: str  # deployed | refused | not_better | failed | skipped
    version: str | None = None
    reason: str | None = None


class RefitLoop:
    def __init__(
        self,
        config: Config,
        engine: AsyncEngine,
        models: LiveModels,
        metrics: Metrics,
        poll_seconds: float = POLL_S,
        replaceable: Callable[[str], bool] = lambda task: False,
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.models = models
        self.store: ModelStore = models.store
        self.metrics = metrics
        self.poll_seconds = min(poll_seconds, config.refit.interval_seconds)
        # True when the served model must go whatever replaces it (e.g. it fell back).
        self.replaceable = replaceable
        self.on_poll = on_poll  # runs at every poll, e.g. to re-read counts the store keeps
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._last_attempt: dict[str, float] = {}
        self._fitting: set[str] = set()
        self._failures: dict[str, int] = {}  # failed refits in a row, by task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tracer-refit-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.models.refresh)
                if self.on_poll is not None:
                    await self.on_poll()
                for task in self.config.tasks:
                    if await self.due(task):
                        await self.refit(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refit loop iteration failed; retrying")
            await asyncio.sleep(self.poll_seconds)

    async def due(self, task: TaskConfig) -> bool:
        """Enough new valid traces, or the interval passed with at least one new trace."""
        last = await store.last_refit(self.engine, task.name)
        after = int(last["last_trace_id"]) if last else 0
        new = await store.count_traces(self.engine, task.name, after_id=after)
        if new >= self.config.refit.min_new_traces:
            return True
        since = time.monotonic() - self._last_attempt.get(task.name, time.monotonic())
        self._last_attempt.setdefault(task.name, time.monotonic())
        return new > 0 and since >= self.config.refit.interval_seconds

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
        n, last_id = await self._export(task.name, traces_path)
        version = self.store.next_version(task.name)
        out_dir = self.store.version_dir(task.name, version)
        options = {
            "target": task.target,
            "confidence": task.confidence,
            "min_coverage": task.min_coverage,
            "horizon": task.horizon,
            "ood_quantile": task.ood_quantile,
            "labels": task.labels,
            "embedder": task.embedder,
            "task": task.name,
            "quiet": True,
        }
        log.info("task %s: fitting %s on %d traces", task.name, version, n)
        code, output = await self._run_worker(
            traces_path, out_dir, options, work / f"{version}.log"
        )
        traces_path.unlink(missing_ok=True)
        manifest = self.store.manifest(task.name, version)
        passed = code == 0 and manifest is not None and manifest.get("status") == "deployed"
        if passed and (worse := await self._worse_than_served(task.name, manifest)):
            result = RefitOutcome("not_better", version, worse)
        elif passed:
            try:
                await asyncio.to_thread(self.store.set_current, task.name, version)
                await asyncio.to_thread(self.models.refresh_task, task.name)
                result = RefitOutcome("deployed", version)
            except Exception as exc:  # a bad artifact must not take the served one down
                result = RefitOutcome("failed", version, f"could not serve: {exc}")
        elif code in (REFUSED, FAILED) and manifest is not None:
            refusal = manifest.get("refusal") or {}
            outcome = "refused" if code == REFUSED else "failed"
            result = RefitOutcome(outcome, version, str(refusal.get("reason") or outcome))
        else:
            result = RefitOutcome("failed", version, f"fit exited with {code}: {output[-500:]}")
        self.metrics.refits.labels(task.name, result.outcome).inc()
        failures = self._failures[task.name] = (
            self._failures.get(task.name, 0) + 1 if result.outcome == "failed" else 0
        )
        self.metrics.refit_failures.labels(task.name).set(failures)
        log.log(
            logging.INFO if result.outcome == "deployed" else logging.WARNING,
            "task %s: refit %s %s%s%s", task.name, version, result.outcome,
            f" ({result.reason})" if result.reason else "",
            f"; {failures} failed refits in a row" if failures > 1 else "",
        )  # fmt: skip
        await store.record_refit(
            self.engine,
            task=task.name,
            outcome=result.outcome,
            version=result.version,
            n_traces=n,
            last_trace_id=last_id,
            reason=result.reason,
            seconds=time.monotonic() - started,
        )
        return result

    async def _worse_than_served(self, task: str, manifest: dict[str, Any] | None) -> str | None:
        """Why a model that passed the gate should still not replace the served one.

        The new model's coverage is certified at the task's alpha on its calibration
        split. The served model is judged by the coverage it has delivered on live
        traffic once it has decided `MIN_DECIDED` requests (its own certified figure
        came from an older, smaller calibration split, which may have been lucky),
        else by its certified coverage.
        """
        live = self.models.get(task)
        if live is None or manifest is None or self.replaceable(task):
            return None
        cal = manifest.get("calibration") or {}
        new = float(cal.get("coverage") or 0.0)
        handled, decided = await store.served_coverage(self.engine, task, live.version)
        if decided >= MIN_DECIDED:
            served, what = handled / decided, f"coverage on its last {decided} requests"
        else:
            served, what = live.certified_coverage, "certified coverage"
        if new >= served - NOT_WORSE_BY:
            return None
        return (
            f"certified coverage {new:.3f} is below the served {live.version}'s "
            f"{what}, {served:.3f}; {live.version} stays"
        )

    async def _export(self, task: str, path: Path) -> tuple[int, int]:
        n, last_id = 0, 0
        with path.open("w", encoding="utf-8") as out:
            async for row in store.iter_traces(self.engine, task):
                trace = {"input": row["input"], "label": row["label"], "source": row["source"]}
                out.write(json.dumps(trace) + "\n")
                n, last_id = n + 1, int(row["id"])
        return n, last_id

    async def _run_worker(
        self, traces: Path, out_dir: Path, options: dict[str, object], log_path: Path
    ) -> tuple[int, str]:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                # -P: the working directory is not on the child's import path, so a
                # user's own training.py or router/ there cannot stand in for ours.
                sys.executable, "-P", "-m", "proxy.refit_worker",
                str(traces), str(out_dir), json.dumps(options),
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
        return code, log_path.read_text(encoding="utf-8", errors="replace")
