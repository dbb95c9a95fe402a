"""Where a task request goes: one decision that the chat and classify routes both act on.

`Decider.decide` looks at the task's state (a served model or not, a fallback),
at what the request asks for, and at the model's prediction, and returns a `Route`:
its decision (`handled`, `deferred`, `teacher`), the reason, which lane answers, and
the prediction behind it. The headers, the body's `tracer` field and the decisions
table all say what the route says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from router import Decision as Prediction
from router.tools import MESSAGE, ToolPlan

from .config import TaskConfig
from .metrics import Metrics
from .models import LiveModel, LiveModels
from .monitor import Monitor
from .tool_calls import offered_tool, tool_ineligible, valid_arguments

DecisionKind = Literal["handled", "deferred", "teacher", "passthrough"]
SURROGATE, TEACHER = "surrogate", "teacher"


def ineligible(body: Mapping[str, Any]) -> str | None:
    """Why the surrogate cannot honour this request as asked, if it cannot."""
    if body.get("n") not in (None, 1):
        return "n > 1 asks for several samples"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs were requested"
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key):
            return f"`{key}` is set"
    return None


@dataclass(frozen=True)
class Route:
    """How a task request is answered, and why."""

    decision: DecisionKind
    reason: str
    lane: str = TEACHER  # surrogate | a lane's model_name | teacher
    live: LiveModel | None = None
    prediction: Prediction | None = None
    tool: ToolPlan | None = None  # a tool task: the whole call, or the tool to narrow to

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

    @property
    def consulted_model(self) -> bool:
        """The served model judged the request, so a teacher answer to it is one of the
        model's hard cases unless drawn at the sampling rate (`SamplingPolicy.source`)."""
        return self.prediction is not None

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
        if self.narrowed:
            assert self.tool is not None
            headers["x-tracer-narrowed-to"] = self.tool.name
        return headers

    def body_field(self) -> dict[str, Any]:
        """The `tracer` field of a response body: the same facts as the headers."""
        field: dict[str, Any] = {}
        if self.tool is not None and self.narrowed:
            field["narrowed_to"] = self.tool.name
        return field | {
            "decision": self.decision,
            "lane": self.lane,
            "label": self.label,
            "accept_score": self.score,
            "model_version": self.version,
            "reason": self.reason,
        }


def _header_safe(text: str) -> str:
    """Header values are latin-1 on the wire: anything else is escaped, and cut short."""
    return text[:300].encode("latin-1", "backslashreplace").decode("latin-1").replace("\n", " ")


def passthrough(reason: str) -> Route:
    return Route("passthrough", reason)


class Decider:
    """Decides a task request's route from the served model and the live checks."""

    def __init__(self, models: LiveModels, monitor: Monitor, metrics: Metrics) -> None:
        self.models = models
        self.monitor = monitor
        self.metrics = metrics

    async def decide(self, task: TaskConfig, body: Mapping[str, Any], text: str) -> Route:
        live = self.models.get(task.name)
        if live is None:
            return Route("teacher", "no model deployed")
        fallback = self.monitor.fallback_reason(task.name)
        if fallback is not None:
            return Route("teacher", f"fallback: {fallback}")
        why_not = tool_ineligible(body) if task.kind == "tools" else ineligible(body)
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
        tool = offered_tool(body, plan.name)
        if tool is None or plan.kind == "defer":
            why = plan.reason if tool is not None else f"the request offers no tool {plan.name}"
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
