"""What the teacher costs and what answering locally saved, per task."""

from __future__ import annotations

from .metrics import Metrics


class Ledger:
    """The mean cost of a teacher call, from the traces stored so far; savings from it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._teacher: dict[str, tuple[float, int]] = {}  # task -> (total USD, priced calls)

    def teacher_call(self, task: str, cost_usd: float | None) -> None:
        if cost_usd is not None:
            total, n = self._teacher.get(task, (0.0, 0))
            self._teacher[task] = (total + cost_usd, n + 1)

    def mean_teacher_cost(self, task: str) -> float | None:
        total, n = self._teacher.get(task, (0.0, 0))
        return total / n if n else None

    def teacher_totals(self, task: str) -> tuple[float, int]:
        """(USD, priced calls) of the teacher calls stored so far."""
        return self._teacher.get(task, (0.0, 0))

    def avoided(self, task: str) -> None:
        """A request answered without any teacher call: count it and what it saved."""
        self.metrics.teacher_calls_avoided.labels(task).inc()
        mean = self.mean_teacher_cost(task)
        if mean is not None:
            self.metrics.cost_saved.labels(task).inc(mean)
