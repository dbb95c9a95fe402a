"""One request's bookkeeping: its task label for metrics, and when it started."""

from __future__ import annotations

import time

from .config import TaskConfig
from .metrics import NO_TASK, Metrics


class Exchange:
    def __init__(self, metrics: Metrics, task: TaskConfig | None) -> None:
        self.metrics = metrics
        self.task = task
        self.task_label = task.name if task is not None else NO_TASK
        self.started = time.perf_counter()

    def finish(self, decision: str) -> None:
        """Count the request under its final decision (or `error`) and its latency."""
        self.metrics.requests.labels(self.task_label, decision).inc()
        self.metrics.request_latency.labels(self.task_label).observe(
            time.perf_counter() - self.started
        )

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
