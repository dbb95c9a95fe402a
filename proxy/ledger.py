"""What the teacher costs and what answering locally (or narrowing) saved, per task."""

from __future__ import annotations

from .metrics import Metrics


class Ledger:
    """Mean cost and prompt size of a full teacher call, from the traces stored so far;
    the savings they imply."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._teacher: dict[str, tuple[float, int]] = {}  # task -> (total USD, priced calls)
        self._prompts: dict[str, tuple[int, int]] = {}  # task -> (prompt tokens, calls)

    def teacher_call(self, task: str, cost_usd: float | None, prompt_tokens: int | None) -> None:
        """A full teacher call was stored (a narrowed one is not: it is the cheap kind)."""
        if cost_usd is not None:
            total, n = self._teacher.get(task, (0.0, 0))
            self._teacher[task] = (total + cost_usd, n + 1)
        if prompt_tokens is not None:
            tokens, n = self._prompts.get(task, (0, 0))
            self._prompts[task] = (tokens + prompt_tokens, n + 1)

    def mean_teacher_cost(self, task: str) -> float | None:
        total, n = self._teacher.get(task, (0.0, 0))
        return total / n if n else None

    def mean_prompt_tokens(self, task: str) -> float | None:
        tokens, n = self._prompts.get(task, (0, 0))
        return tokens / n if n else None

    def teacher_totals(self, task: str) -> tuple[float, int]:
        """(USD, priced calls) of the teacher calls stored so far."""
        return self._teacher.get(task, (0.0, 0))

    def avoided(self, task: str) -> None:
        """A request answered without any teacher call: count it and what it saved."""
        self.metrics.teacher_calls_avoided.labels(task).inc()
        mean = self.mean_teacher_cost(task)
        if mean is not None:
            self.metrics.cost_saved.labels(task).inc(mean)

    def narrowed(self, task: str, prompt_tokens: int | None, cost_usd: float | None) -> None:
        """A request answered by a narrowed call: the prompt and cost it saved against a
        full teacher call (its mean so far)."""
        self.metrics.narrowed.labels(task).inc()
        full_prompt = self.mean_prompt_tokens(task)
        if full_prompt is not None and prompt_tokens is not None:
            self.metrics.prompt_tokens_saved.labels(task).inc(max(0.0, full_prompt - prompt_tokens))
        full_cost = self.mean_teacher_cost(task)
        if full_cost is not None and cost_usd is not None:
            self.metrics.cost_saved.labels(task).inc(max(0.0, full_cost - cost_usd))

    def lane_answered(self, task: str, cost_usd: float | None) -> None:
        """A request a lane model answered: the teacher's mean cost, less the lane's."""
        full_cost = self.mean_teacher_cost(task)
        if full_cost is not None:
            self.metrics.cost_saved.labels(task).inc(max(0.0, full_cost - (cost_usd or 0.0)))
