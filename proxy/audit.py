"""The live audit: a share of handled requests is also asked of the teacher, afterwards.

The reply has gone out before the audit starts, so it never delays anyone. The
teacher's answer becomes a trace (`source = audit`), and whether the served answer
was the teacher's becomes an audit record, which the live checks (`proxy.monitor`)
read from the store. At most `MAX_IN_FLIGHT` audits wait at once; further ones are
skipped and counted.
"""

from __future__ import annotations

from typing import Any

from router.chat import same_answer

from . import store
from .background import BackgroundJobs
from .config import TaskConfig
from .errors import UpstreamError
from .metrics import Metrics
from .routing import SURROGATE, Route
from .teacher import Teacher, answer_key

MAX_IN_FLIGHT = 64


class Auditor:
    def __init__(self, teacher: Teacher, writer: store.StoreWriter, metrics: Metrics) -> None:
        self.teacher = teacher
        self.writer = writer
        self.metrics = metrics
        self.jobs = BackgroundJobs(MAX_IN_FLIGHT)

    def start(
        self,
        task: TaskConfig,
        route: Route,
        body: dict[str, Any],
        text: str,
        served: str,
        by_label: bool = False,
    ) -> bool:
        """Audit a handled request in the background; False when too many already wait."""
        if self.jobs.spawn(lambda: self._audit(task, route, body, text, served, by_label)):
            return True
        self.metrics.audits.labels(task.name, "skipped").inc()
        return False

    async def _audit(
        self,
        task: TaskConfig,
        route: Route,
        body: dict[str, Any],
        text: str,
        served: str,
        by_label: bool,
    ) -> None:
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        try:
            answer = await self.teacher.ask(self.teacher.entry(task), request, task.name)
        except UpstreamError:
            self.metrics.audits.labels(task.name, "error").inc()
            return
        label = self.teacher.store_trace(task, text, answer, "audit")
        said = label if by_label else answer_key(task, answer.answer)
        if label is None or said is None:
            self.metrics.audits.labels(task.name, "invalid").inc()
            return
        agrees = served == said if by_label else same_answer(served, said, task.output.format)
        self.record(task, route, text, agrees)

    def record(self, task: TaskConfig, route: Route, text: str, agrees: bool) -> None:
        """An audit of the served version's answer (or, for a narrowed request sampled for
        the teacher, of its tool choice): what the live checks read."""
        self.metrics.audits.labels(task.name, "agree" if agrees else "disagree").inc()
        cluster = route.prediction.cluster if route.prediction is not None else None
        self.writer.submit(store.Audit(task.name, route.version, agrees, SURROGATE, cluster, text))

    async def stop(self) -> None:
        await self.jobs.stop()
