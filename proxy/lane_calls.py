"""Calls to lane models: answering a request routed to one, and checks against the teacher.

A lane's answer is parsed with the task's rules and given in the teacher's own words
for that label (`local.answer_text`), so a lane that agrees on the label gives the
teacher's answer byte for byte. A lane that fails or answers no valid label hands the
request back to the teacher: the client never sees a lane's error. So does a lane that
only confirms (`lane_certify.CONFIRMS`) when its label is neither of the surrogate's
two guesses; the teacher's answer then checks it at no extra call.

Checks run in the background after the teacher has answered, never delaying anyone:
every lane on a share of the teacher's answers (`shadow`), and the one lane a request
was routed to when it was sampled for the teacher instead (`audit`, or `confirm` for
a confirming lane whose answer was a guess). Each becomes an audit record that
`proxy.monitor` feeds to the task's `TaskLanes`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from router.chat import same_answer

from . import store
from .background import BackgroundJobs
from .config import TaskConfig
from .errors import UpstreamError
from .lanes import TaskLanes
from .local import answer_text
from .metrics import Metrics
from .pricing import call_cost
from .routing import Route
from .teacher import Teacher, TeacherAnswer, answer_key, label_of
from .upstream import Upstream

MAX_IN_FLIGHT = 64


@dataclass(frozen=True)
class LaneAnswer:
    label: str
    content: str  # the teacher's words for the label
    cost_usd: float | None


class LaneFailed(Exception):
    """The lane gave no usable answer; the message says why, for the route's reason."""

    def __init__(self, message: str, said: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.said = said  # (lane, label): a valid answer not served, still worth a check


class LaneCalls:
    def __init__(
        self,
        lanes: dict[str, TaskLanes],
        upstream: Upstream,
        teacher: Teacher,
        writer: store.StoreWriter,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.lanes = lanes
        self.upstream = upstream
        self.teacher = teacher
        self.writer = writer
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.jobs = BackgroundJobs(MAX_IN_FLIGHT)

    async def _ask(
        self, task: TaskConfig, lane: str, body: dict[str, Any]
    ) -> tuple[TeacherAnswer, float | None]:
        entry = self.upstream.entry(lane)
        if entry is None:
            raise LaneFailed(f"lane {lane} is not in model_list")
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        try:
            answer = await self.teacher.ask(entry, request, task.name)
        except UpstreamError as err:
            self.metrics.lane_calls.labels(task.name, lane, "error").inc()
            raise LaneFailed(f"lane {lane} failed ({err.kind})") from None
        said = answer.answer
        cost = call_cost(entry, said.prompt_tokens, said.completion_tokens)
        if cost is not None:
            self.metrics.lane_cost.labels(task.name, lane).inc(cost)
            self.lanes[task.name].paid(lane, cost)
        return answer, cost

    async def answer(self, task: TaskConfig, route: Route, body: dict[str, Any]) -> LaneAnswer:
        """The lane's answer to a request routed to it; LaneFailed when there is none."""
        assert route.live is not None
        answer, cost = await self._ask(task, route.lane, body)
        label = label_of(task, answer.answer)
        if label is None:
            self.metrics.lane_calls.labels(task.name, route.lane, "invalid").inc()
            raise LaneFailed(f"lane {route.lane}'s answer is not a valid label")
        guesses = route.prediction.guesses if route.prediction is not None else ()
        if route.confirms and label not in guesses:
            self.metrics.lane_calls.labels(task.name, route.lane, "unconfirmed").inc()
            why = f"lane {route.lane} answers {label!r}, not a guess"
            raise LaneFailed(why, (route.lane, label))
        self.metrics.lane_calls.labels(task.name, route.lane, "answered").inc()
        return LaneAnswer(label, answer_text(task, route.live, label), cost)

    # -- checks -----------------------------------------------------------------------------
    def after_teacher(
        self,
        task: TaskConfig,
        route: Route,
        body: dict[str, Any],
        text: str,
        answer: TeacherAnswer,
        label: str | None,
    ) -> None:
        """The teacher answered a task request: check the lanes against it, maybe."""
        lanes = self.lanes.get(task.name)
        said = answer_key(task, answer.answer)
        if lanes is None or label is None or said is None:
            return
        if route.lane_said is not None:  # the lane was asked already, and not served
            lane, lane_label = route.lane_said
            self._record(task, route, text, (label, said), lane, lane_label, "shadow")
        elif route.audit_lane is not None:
            self._start(task, route, body, text, (label, said), route.audit_lane, "audit")
        elif self.rng.random() < lanes.shadow_rate():
            for lane in lanes.lanes:
                self._start(task, route, body, text, (label, said), lane, "shadow")

    def _start(
        self,
        task: TaskConfig,
        route: Route,
        body: dict[str, Any],
        text: str,
        teacher: tuple[str, str],
        lane: str,
        kind: str,
    ) -> None:
        if not self.jobs.spawn(lambda: self._check(task, route, body, text, teacher, lane, kind)):
            self.metrics.lane_calls.labels(task.name, lane, "skipped").inc()

    async def _check(
        self,
        task: TaskConfig,
        route: Route,
        body: dict[str, Any],
        text: str,
        teacher: tuple[str, str],
        lane: str,
        kind: str,
    ) -> None:
        """Ask `lane` too, and record how its answer compares with the teacher's."""
        try:
            answer, _ = await self._ask(task, lane, body)
        except LaneFailed:
            return
        label = label_of(task, answer.answer)
        guesses = route.prediction.guesses if route.prediction is not None else ()
        if kind == "audit" and route.confirms:  # an audit of what the lane would serve
            kind = "confirm" if label in guesses else "shadow"
        self._record(task, route, text, teacher, lane, label, kind)

    def _record(
        self,
        task: TaskConfig,
        route: Route,
        text: str,
        teacher: tuple[str, str],
        lane: str,
        label: str | None,
        kind: str,
    ) -> None:
        """A check: the lane's label, in the teacher's words, against the teacher's answer."""
        teacher_label, said = teacher
        live = route.live
        if label is None:
            agrees = False
        elif live is not None:
            agrees = same_answer(answer_text(task, live, label), said, task.output.format)
        else:  # no version yet, so no words of the teacher's to give: compare the labels
            agrees = label == teacher_label
        self.metrics.lane_calls.labels(task.name, lane, "agree" if agrees else "disagree").inc()
        cluster = route.prediction.cluster if route.prediction is not None else None
        self.writer.submit(
            store.Audit(task.name, route.version, agrees, lane, cluster, text, kind, label)
        )

    async def stop(self) -> None:
        await self.jobs.stop()
