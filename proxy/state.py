"""The proxy's state: every long-lived part, built once per app and passed down.

Nothing here decides how a request is answered: that is `routing`, `local`,
`teacher` and the routes. This module builds the parts, wires their callbacks, and
runs the background loop that keeps them current: served versions (the pointers),
sampled-trace counts, the live checks, refits and candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import store
from .audit import Auditor
from .config import Config
from .lane_calls import LaneCalls
from .lanes import Guess, TaskLanes, lane_prices
from .ledger import Ledger
from .metrics import Metrics
from .models import LiveModel, LiveModels
from .monitor import Baseline, Monitor
from .promotion import Promotion
from .refit import POLL_S, RefitLoop
from .routing import Decider
from .sampling import SamplingPolicy
from .shared_models import model_store
from .tasks import TaskMatcher
from .teacher import Teacher
from .upstream import Upstream

log = logging.getLogger("tracer.proxy")


class ProxyState:
    """Everything a request handler needs, built once per app (never at import)."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.started_at = time.time()
        self.upstream = Upstream(config)
        self.matcher = TaskMatcher(config.tasks)
        self.engine = store.create_engine(config.store.url)
        self.writer = store.StoreWriter(
            self.engine, config.store.queue_size, on_stored=self._stored, on_dropped=self._dropped
        )
        self.ledger = Ledger(self.metrics)
        self.lanes = {t.name: TaskLanes(t, lane_prices(config, t)) for t in config.tasks if t.lanes}
        self.monitor = Monitor(config, self.engine, self.metrics, self.lanes)
        self.sampling = SamplingPolicy(config, self.engine, self.metrics, self.monitor)
        task_names = [t.name for t in config.tasks]
        models = model_store(config.artifacts.dir, config.store.url)  # versions in the store
        self.models = LiveModels(models, task_names, self._swapped)
        self.decider = Decider(self.models, self.monitor, self.metrics, self.lanes)
        self.teacher = Teacher(self.upstream, self.writer, self.metrics, self.sampling)
        self.lane_calls = LaneCalls(
            self.lanes, self.upstream, self.teacher, self.writer, self.metrics
        )
        self.auditor = Auditor(self.teacher, self.writer, self.metrics)
        self.refits = RefitLoop(config, self.engine, self.models, self.metrics, self.monitor)
        self.promotion = Promotion(self.engine, self.models, self.metrics, self.monitor)
        self.poll_seconds = min(POLL_S, config.refit.interval_seconds)
        self._loops: list[asyncio.Task[None]] = []
        self.tools_seen: dict[str, list[Any]] = {}
        self._polling = asyncio.Lock()  # the loop and a caller (the demo) never poll at once
        self._loop: asyncio.AbstractEventLoop | None = None  # set by `start`

    def fallback_reason(self, task: str) -> str | None:
        return self.monitor.fallback_reason(task)

    def remember_tools(self, task: str, tools: list[Any]) -> None:
        """The tools a tool task's agent offered last: what /v1/classify sends the teacher.

        Kept in the store too when they change, so that every worker, and this one
        after a restart, knows them."""
        if self.tools_seen.get(task) != tools:
            self.tools_seen[task] = tools
            self.writer.submit(store.ToolList(task, json.dumps(tools)))

    async def known_tools(self, task: str) -> list[Any] | None:
        """The tools this worker saw offered last for `task`, else the store's newest (any
        worker's); None: never."""
        tools = self.tools_seen.get(task)
        if tools is None:
            stored = await store.latest_tools(self.engine, task)
            loaded = json.loads(stored) if stored is not None else None
            if isinstance(loaded, list) and loaded:
                tools = self.tools_seen.setdefault(task, loaded)
        return tools

    # -- callbacks ------------------------------------------------------------------------
    def _swapped(self, task: str, old: LiveModel | None, new: LiveModel) -> None:
        """A version was loaded, in a worker thread: its bookkeeping runs on the event
        loop, queued before the load's own result, so it is done when the load's caller
        resumes, and never lands in the middle of a poll's reading of the audits."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and not _running(loop):
            loop.call_soon_threadsafe(self._serve, task, old, new)
        else:
            self._serve(task, old, new)

    def _serve(self, task: str, old: LiveModel | None, new: LiveModel) -> None:
        if old is not None:
            self.metrics.forget(self.metrics.model_info, task, old.version)
        self.metrics.model_info.labels(task, new.version).set(1)
        cal = new.manifest.calibration
        self.monitor.serve(task, new.version, Baseline.of(cal))
        if cal is not None and cal.agreement is not None:
            self.metrics.calibration_agreement.labels(task).set(cal.agreement)
        self.metrics.calibration_coverage.labels(task).set(new.certified_coverage)

    def _stored(self, batch: list[store.Record]) -> None:
        for record in batch:
            if isinstance(record, store.Trace):
                self.metrics.traces_stored.labels(record.task, str(record.valid).lower()).inc()
                task = self.config.task(record.task)
                if task is not None and record.valid:
                    self.sampling.stored(task, record.source)
                if record.source != "narrowed":
                    self.ledger.teacher_call(record.task, record.cost_usd, record.prompt_tokens)
                if record.cost_usd is not None:
                    teacher = task is None or record.model == task.teacher
                    lane = "teacher" if teacher else record.model
                    self.metrics.lane_cost.labels(record.task, lane).inc(record.cost_usd)

    def _dropped(self, record: store.Record) -> None:
        tables = {store.Trace: "traces", store.Decision: "decisions", store.ToolList: "tool_lists"}
        table = tables.get(type(record), "audits")
        self.metrics.store_dropped.labels(table).inc()

    # -- life -------------------------------------------------------------------------------
    async def start(self, refit: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        await store.create_schema(self.engine)
        await self.sampling.count()
        await self.upstream.start()
        self.writer.start()
        await asyncio.to_thread(self.models.refresh)
        await self.monitor.poll()
        self._loops.append(asyncio.create_task(self._every(self.poll), name="tracer-checks"))
        if refit and self.config.tasks:
            self._loops.append(
                asyncio.create_task(self._every(self.refits.tick), name="tracer-refit")
            )

    async def poll(self) -> None:
        """Follow the pointers, recount samples, read new evidence, settle candidates.

        Fits run in a loop of their own (`RefitLoop.tick`), so a long fit never delays
        a demotion.
        """
        async with self._polling:
            await asyncio.to_thread(self.models.refresh)
            await self.sampling.count()
            await self.monitor.poll()
            for task in self.config.tasks:
                await self.promotion.check(task)
            for name, lanes in self.lanes.items():
                await self._recertify(name, lanes)

    async def _recertify(self, task: str, lanes: TaskLanes) -> None:
        """A lane round when one is due, its checks clustered by the served version."""
        live = self.models.get(task)
        if live is None or not lanes.due(live.version):
            return
        router = live.router

        def assign(texts: list[str]) -> list[Guess]:
            decisions = router.predict_batch(texts)
            return [(None, ()) if d.handled or d.ood else (d.cluster, d.guesses) for d in decisions]

        await asyncio.to_thread(lanes.recertify, live.version, assign)

    async def _every(self, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background step failed; retrying at the next poll")

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self.auditor.stop()
        await self.lane_calls.stop()
        await self.writer.close()
        await self.upstream.close()
        await self.engine.dispose()
        await asyncio.to_thread(self.models.store.close)


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running `loop`."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
