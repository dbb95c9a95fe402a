"""Prometheus metrics, one registry per app so tests and workers never share state.

Label values are bounded: task names from the config and fixed kinds. Never a raw
model name, a key or user input.

With `tracer serve --workers N`, prometheus_client's multiprocess mode is on (the
parent sets PROMETHEUS_MULTIPROC_DIR to a fresh folder before the workers start):
each worker writes its values to files there and `/metrics` reads them all. Counters
and histograms are summed over the workers; each gauge says how it is combined
(`multiprocess_mode`): requests in flight are summed, the served version is shown per
worker (a `pid` label), alarms take the highest worker's value, and figures every
worker computes from the same store take the latest. Alone, a process ignores the modes.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "NO_TASK", "Metrics", "multiprocess"]

# From half a millisecond (a local answer) to a minute (a slow teacher).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

NO_TASK = "none"


def multiprocess() -> bool:
    """Whether prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR (chosen at import)."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.multiprocess = multiprocess()
        r = self.registry
        self.requests = Counter(
            "tracer_requests",
            "Requests by task and decision (passthrough, teacher, handled, deferred, error).",
            ["task", "decision"],
            registry=r,
        )
        self.request_latency = Histogram(
            "tracer_request_duration_seconds",
            "Time from request to the end of the response body, by task.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tracer_upstream_duration_seconds",
            "Time spent waiting for the upstream LLM, by task.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "tracer_upstream_errors",
            "Upstream failures by kind (timeout, unreachable, status_4xx, status_5xx, other).",
            ["kind"],
            registry=r,
        )
        self.traces_stored = Counter(
            "tracer_traces_stored",
            "Teacher answers written to the trace store, by task and validity.",
            ["task", "valid"],
            registry=r,
        )
        self.store_dropped = Counter(
            "tracer_store_dropped",
            "Records that could not be written (queue full or write failure), by table.",
            ["table"],
            registry=r,
        )
        self.ood = Counter(
            "tracer_ood",
            "Task requests deferred because the input is out of distribution.",
            ["task"],
            registry=r,
        )
        self.teacher_calls_avoided = Counter(
            "tracer_teacher_calls_avoided",
            "Task requests answered by the surrogate and not audited: no teacher call.",
            ["task"],
            registry=r,
        )
        self.cost_saved = Counter(
            "tracer_cost_saved_usd",
            "Estimated cost avoided against asking the teacher everything: its mean cost per "
            "call for each request answered locally, less what a lane or a narrowed call cost.",
            ["task"],
            registry=r,
        )
        self.narrowed = Counter(
            "tracer_narrowed",
            "Tool-task requests whose tool was certain but not its arguments: the request "
            "was narrowed to that tool and forced.",
            ["task"],
            registry=r,
        )
        self.prompt_tokens_saved = Counter(
            "tracer_prompt_tokens_saved",
            "Prompt tokens narrowed calls did not send, against the mean full teacher call.",
            ["task"],
            registry=r,
        )
        self.lane_requests = Counter(
            "tracer_lane_requests",
            "Task requests by the lane that answered: surrogate, a lane's model_name, teacher.",
            ["task", "lane"],
            registry=r,
        )
        self.lane_cost = Counter(
            "tracer_lane_cost_usd",
            "What calls to each upstream model of a task cost (teacher, lanes, narrowing; "
            "answers and checks alike), from its prices.",
            ["task", "lane"],
            registry=r,
        )
        self.lane_calls = Counter(
            "tracer_lane_calls",
            "Calls to lane models by outcome: answered; unconfirmed, invalid, error (the "
            "teacher answered instead); agree, disagree (checks against the teacher); skipped.",
            ["task", "lane", "outcome"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "tracer_shadow_requests",
            "Shadow mode: requests the teacher answered, by what the model would have done "
            "(handled, deferred).",
            ["task", "would"],
            registry=r,
        )
        self.shadow_checks = Counter(
            "tracer_shadow_checks",
            "Shadow mode: would-be local answers compared with the teacher's (agree, disagree).",
            ["task", "outcome"],
            registry=r,
        )
        self.shadow_savable = Counter(
            "tracer_shadow_cost_savable_usd",
            "Shadow mode: the teacher's cost of the requests the model would have answered.",
            ["task"],
            registry=r,
        )
        self.refits = Counter(
            "tracer_refits",
            "Refit attempts by outcome (deployed, refused, failed).",
            ["task", "outcome"],
            registry=r,
        )
        self.refit_failures = Gauge(
            "tracer_refit_failures_in_a_row",
            "Refits of a task that failed (crashed, not refused) since its last other outcome.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.model_info = Gauge(
            "tracer_model_info",
            "The model version each task serves (value 1).",
            ["task", "version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.calibration_agreement = Gauge(
            "tracer_model_calibration_agreement",
            "Agreement with the teacher on accepted calibration traces, for the live model.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.calibration_coverage = Gauge(
            "tracer_model_calibration_coverage",
            "Share of calibration traces the live model accepts.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.audits = Counter(
            "tracer_audits",
            "Handled requests also sent to the teacher, by outcome "
            "(agree, disagree, invalid, error, skipped).",
            ["task", "outcome"],
            registry=r,
        )
        self.sampling_rate = Gauge(
            "tracer_sampling_rate",
            "Share of served requests sampled for calibration (audited when handled); "
            "audit_rate, boosted while the task has few sampled traces.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.live_agreement = Gauge(
            "tracer_live_agreement",
            "Agreement with the teacher over recent audits of the served version.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.live_agreement_lower = Gauge(
            "tracer_live_agreement_lower_bound",
            "Clopper-Pearson lower bound of live agreement at the task's confidence.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.drift_score = Gauge(
            "tracer_drift_score",
            "Evidence from audits that the served version's agreement is below target, as a "
            "share of the demotion threshold (log scale): 1 falls back to the teacher.",
            ["task"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.shift_score = Gauge(
            "tracer_shift_score",
            "Evidence that the share of unusual inputs (out of distribution, or less sure than "
            "calibration's least sure 5%) rose above what the served version's calibration "
            "saw, as a share of the alarm threshold (log scale).",
            ["task"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.version_audits = Gauge(
            "tracer_version_audits",
            "Audits of the served version so far (its probation ends as they accumulate).",
            ["task"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.fallback = Gauge(
            "tracer_fallback_active",
            "1 while a task answers from the teacher only because its live audits demoted the "
            "served version.",
            ["task"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "tracer_requests_in_flight",
            "Requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        """The text `/metrics` answers: every worker's values when there are several."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def forget(self, gauge: Gauge, *labels: str) -> None:
        """Drop a labelled series (a version no longer served). Files cannot drop one, so
        with several workers the series is set to 0 instead."""
        if self.multiprocess:
            gauge.labels(*labels).set(0)
        else:
            gauge.remove(*labels)
