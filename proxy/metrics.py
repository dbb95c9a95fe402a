"""Prometheus metrics, one registry per app so tests and workers never share state.

Label values are bounded: task names from the config and fixed kinds. Never a raw
model name, a key or user input.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From half a millisecond (a local answer) to a minute (a slow teacher).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

NO_TASK = "none"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
            "Estimated teacher cost avoided: the teacher's mean cost per call times the "
            "teacher calls avoided.",
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
        )
        self.model_info = Gauge(
            "tracer_model_info",
            "The model version each task serves (value 1).",
            ["task", "version"],
            registry=r,
        )
        self.calibration_agreement = Gauge(
            "tracer_model_calibration_agreement",
            "Agreement with the teacher on accepted calibration traces, for the live model.",
            ["task"],
            registry=r,
        )
        self.calibration_coverage = Gauge(
            "tracer_model_calibration_coverage",
            "Share of calibration traces the live model accepts.",
            ["task"],
            registry=r,
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
        )
        self.live_agreement = Gauge(
            "tracer_live_agreement",
            "Agreement with the teacher over recent audits of the served version.",
            ["task"],
            registry=r,
        )
        self.live_agreement_lower = Gauge(
            "tracer_live_agreement_lower_bound",
            "Clopper-Pearson lower bound of live agreement at the task's confidence.",
            ["task"],
            registry=r,
        )
        self.drift_score = Gauge(
            "tracer_drift_score",
            "Evidence from audits that the served version's agreement is below target, as a "
            "share of the demotion threshold (log scale): 1 falls back to the teacher.",
            ["task"],
            registry=r,
        )
        self.shift_score = Gauge(
            "tracer_shift_score",
            "Evidence that the share of out-of-distribution inputs rose above what the served "
            "version's calibration saw, as a share of the alarm threshold (log scale).",
            ["task"],
            registry=r,
        )
        self.version_audits = Gauge(
            "tracer_version_audits",
            "Audits of the served version so far (its probation ends as they accumulate).",
            ["task"],
            registry=r,
        )
        self.fallback = Gauge(
            "tracer_fallback_active",
            "1 while a task answers from the teacher only because its live audits demoted the "
            "served version.",
            ["task"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tracer_requests_in_flight", "Requests being served now.", registry=r
        )
