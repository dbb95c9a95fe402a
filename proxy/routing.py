"""Where a task request goes: one decision that the chat and classify routes both act on.

`Decider.decide` looks at the task's state (a served model or not, a fallback),
at what the request asks for, and at the model's prediction, and returns a `Route`:
its decision (`handled`, `deferred`, `teacher`), the reason, which lane answers, and
the prediction behind it. The headers, the body's `tracer` field and the decisions
table all say what the route says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from router import Decision as Prediction
from router.tools import MESSAGE, ToolPlan

from .config import TaskConfig
from .lane_certify import CONFIRMS
from .lanes import TaskLanes
from .metrics import Metrics
from .models import LiveModel, LiveModels
from .monitor import Monitor
from .store import Decision as DecisionRecord
from .tool_calls import offered_tool, tool_ineligible, valid_arguments

DecisionKind = Literal["handled", "deferred", "teacher", "passthrough"]
SURROGATE, TEACHER = "surrogate", "teacher"


def ineligible(body: Mapping[str, Any], output_format: str = "text") -> str | None:
    """Why the surrogate cannot honour this request as asked, if it cannot.

    A `response_format` other than text is honoured only where every local answer is
    already what it asks for: `json_object` on a task whose answers are JSON objects.
    """
    asked = body.get("response_format")
    kind = asked.get("type") if isinstance(asked, dict) else None
    if kind not in (None, "text") and not (kind == "json_object" and output_format == "json"):
        return f"response_format {kind} asks for a form the local answer does not promise"
    if body.get("n") not in (None, 1):
        return "n > 1 asks for several samples"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs were requested"
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key):
            return f"`{key}` is set"
    return None


@dataclass(frozen=True)
class Shadow:
    """Shadow mode: what the model would have done with a request the teacher answers."""

    would: Literal["handled", "deferred"]
    answer: str | None  # the local answer it would have given (as `answer_key` writes it)
    by_label: bool = False  # compare labels, not whole answers (/v1/classify on a tool task)


@dataclass(frozen=True)
class Route:
    """How a task request is answered, and why."""

    decision: DecisionKind
    reason: str
    lane: str = TEACHER  # surrogate | a lane's model_name | teacher
    live: LiveModel | None = None
    prediction: Prediction | None = None
    tool: ToolPlan | None = None  # a tool task: the whole call, or the tool to narrow to
    sampled: bool = False  # drawn at the sampling rate: its teacher answer samples the traffic
    confirms: bool = False  # the lane's answer is served only if the surrogate guessed it
    audit_lane: str | None = None  # routed to this lane, sampled for the teacher instead
    lane_said: tuple[str, str] | None = None  # (lane, label): a lane's answer not served
    audit_tool: str | None = None  # narrowed to this tool, sampled for the teacher instead
    shadow: Shadow | None = None

    @property
    def by_lane(self) -> bool:
        """A lane model is to answer (not the surrogate, the teacher, or a narrowed call)."""
        return self.lane not in (SURROGATE, TEACHER) and self.tool is None

    @property
    def narrowed(self) -> bool:
        return self.tool is not None and self.tool.kind == "narrow"

    @property
    def version(self) -> str | None:
        return self.live.version if self.live is not None else None

    @property
    def score(self) -> float | None:
        return self.prediction.accept_score if self.prediction is not None else None

    @property
    def label(self) -> str | None:
        return self.prediction.label if self.prediction is not None else None

    @property
    def handled(self) -> bool:
        return self.decision == "handled"

    def record(
        self, task: str, text: str, latency_ms: float, label: str | None,
        reason: str | None = None, shadow_agrees: bool | None = None,
    ) -> DecisionRecord:  # fmt: skip
        """The decisions-table row of this request, answered with `label`."""
        prediction = self.prediction
        return DecisionRecord(
            task=task,
            decision=self.decision,
            reason=self.reason if reason is None else reason,
            label=label,
            accept_score=self.score,
            model_version=self.version,
            latency_ms=latency_ms,
            lane=self.lane,
            ood=prediction.ood if prediction is not None else None,
            cluster=prediction.cluster if prediction is not None else None,
            input=text,
            shadow=self.shadow.would if self.shadow is not None else None,
            shadow_agrees=shadow_agrees,
        )

    @property
    def consulted_model(self) -> bool:
        """The served model judged the request, so a teacher answer to it is one of the
        model's hard cases unless drawn at the sampling rate (`SamplingPolicy.source`).
        In shadow mode the teacher answers everything: the model routed nothing."""
        return self.prediction is not None and self.shadow is None

    def headers(self) -> dict[str, str]:
        headers = {
            "x-tracer-decision": self.decision,
            "x-tracer-reason": _header_safe(self.reason),
            "x-tracer-lane": self.lane,
        }
        if self.score is not None:
            headers["x-tracer-accept-score"] = f"{self.score:.6f}"
        if self.version is not None:
            headers["x-tracer-model-version"] = self.version
        if self.shadow is not None:
            headers["x-tracer-shadow"] = self.shadow.would
        if self.narrowed:
            assert self.tool is not None
            headers["x-tracer-narrowed-to"] = _header_safe(self.tool.name)
        return headers

    def body_field(self) -> dict[str, Any]:
        """The `tracer` field of a response body: the same facts as the headers."""
        field: dict[str, Any] = {}
        if self.tool is not None and self.narrowed:
            field["narrowed_to"] = self.tool.name
        if self.shadow is not None:
            field["shadow"] = self.shadow.would
        return field | {
            "decision": self.decision,
            "lane": self.lane,
            "label": self.label,
            "accept_score": self.score,
            "model_version": self.version,
            "reason": self.reason,
        }


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header_safe(text: str) -> str:
    """Header values are latin-1 on the wire, without control characters (a label or a
    tool name may hold any, and the server refuses such a header: no response at all):
    anything else is escaped, controls become spaces, and the value is cut short."""
    latin = text[:300].encode("latin-1", "backslashreplace").decode("latin-1")
    return _CONTROL.sub(" ", latin)


def shadowed(route: Route, answer: str | None, by_label: bool = False) -> Route:
    """Shadow mode: the teacher answers; the route keeps what the model would have done
    (its prediction, and `answer`, the local answer it would have given)."""
    if route.decision == "teacher":
        return route  # no model, or a fallback: the teacher would have answered anyway
    would: Literal["handled", "deferred"] = "handled" if route.handled else "deferred"
    reason = f"shadow mode: the model would have {would} this ({route.reason})"
    shadow = Shadow(would, answer if route.handled else None, by_label)
    return Route("teacher", reason, TEACHER, route.live, route.prediction, shadow=shadow)


def passthrough(reason: str) -> Route:
    return Route("passthrough", reason)


class Decider:
    """Decides a task request's route from the served model and the live checks."""

    def __init__(
        self,
        models: LiveModels,
        monitor: Monitor,
        metrics: Metrics,
        lanes: Mapping[str, TaskLanes] | None = None,
    ) -> None:
        self.models = models
        self.monitor = monitor
        self.metrics = metrics
        self.lanes = dict(lanes or {})

    async def decide(self, task: TaskConfig, body: Mapping[str, Any], text: str) -> Route:
        live = self.models.get(task.name)
        if live is None:
            return Route("teacher", "no model deployed")
        fallback = self.monitor.fallback_reason(task.name)
        if fallback is not None:
            return Route("teacher", f"fallback: {fallback}")
        why_not = (
            tool_ineligible(body) if task.kind == "tools" else ineligible(body, task.output.format)
        )
        if why_not is not None:
            return Route("deferred", f"deferred: {why_not}", TEACHER, live)
        prediction = await live.predict(text)
        if prediction.handled and task.kind == "tools":
            return self._tool_route(task, body, text, live, prediction)
        if prediction.handled:
            return Route("handled", prediction.reason, SURROGATE, live, prediction)
        if prediction.ood:
            self.metrics.ood.labels(task.name).inc()
            return Route("deferred", prediction.reason, TEACHER, live, prediction)
        lanes = self.lanes.get(task.name)
        chosen = lanes.route(prediction.cluster) if lanes is not None else None
        if chosen is not None:
            lane, mode = chosen
            confirms = mode == CONFIRMS
            guesses = " or ".join(repr(g) for g in prediction.guesses)
            how = f"to confirm the guess {guesses}" if confirms else "alone"
            reason = f"{prediction.reason}; lane {lane} is certified {how} for this cluster"
            return Route("deferred", reason, lane, live, prediction, confirms=confirms)
        return Route("deferred", prediction.reason, TEACHER, live, prediction)

    def _tool_route(
        self,
        task: TaskConfig,
        body: Mapping[str, Any],
        text: str,
        live: LiveModel,
        prediction: Prediction,
    ) -> Route:
        """A certified tool choice: the whole call, a narrowed request, or the teacher."""
        caller = live.router.tools
        if caller is None:
            return Route("deferred", "deferred: the artifact has no tool section", TEACHER,
                         live, prediction)  # fmt: skip
        plan = caller.plan(prediction.label, prediction.accept_score, text)
        reason = f"{prediction.reason}; {plan.reason}"
        if plan.kind == "whole" and plan.name == MESSAGE:
            return Route("handled", reason, SURROGATE, live, prediction, plan)
        tool = offered_tool(body, plan.name) if plan.kind != "defer" else None
        if tool is None:
            why = plan.reason if plan.kind == "defer" else f"the request offers no tool {plan.name}"
            return Route("deferred", f"{prediction.reason}; deferred: {why}", TEACHER, live,
                         prediction)  # fmt: skip
        if plan.kind == "whole" and valid_arguments(tool, plan.arguments or {}):
            return Route("handled", reason, SURROGATE, live, prediction, plan)
        if plan.kind == "whole":
            plan = ToolPlan("narrow", plan.name, plan.arguments, plan.score,
                            "its arguments fail the tool's schema")  # fmt: skip
            reason = f"{prediction.reason}; {plan.reason}"
        lane = task.narrow_to or TEACHER
        return Route("deferred", f"{reason}; narrowed to {plan.name}", lane, live, prediction, plan)
