"""The flywheel's machinery: a simulated teacher and an in-process proxy, driven day by day.

`Flywheel.running` starts both on loopback (store and artifacts in a work folder);
`run_day` replays a day's rows through the proxy with the official openai client;
`refit` fits on the traces so far behind the parity gate, as the background loop
would. `tracer demo` prints what it does; `bench/flywheel.py` measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from starlette.types import Receive, Scope, Send

from ..config import Config, parse_config

if TYPE_CHECKING:
    from ..state import ProxyState
from ..refit import RefitOutcome
from .clients import TASK, Outcome, Row, send_all
from .data import DemoError, StreamDefaults, load_rows, stream_defaults

TEACHER_MODEL = "openai/gpt-4o-mini"  # priced by LiteLLM's map; served by the simulated teacher
HANDLED, TEACHER_SIDE = "handled", ("teacher", "deferred")

__all__ = [
    "TASK",
    "DemoError",
    "Outcome",
    "Row",
    "StreamDefaults",
    "load_rows",
    "send_all",
    "stream_defaults",
]


@dataclass
class Settings:
    per_day: int = 400
    days: int = 6
    teacher_latency_ms: float = 300.0
    concurrency: int = 8
    target: float = 0.95
    confidence: float = 0.95
    min_coverage: float = 0.1
    horizon: int = 0  # tasks[].horizon: promise the target on batches of this many
    audit_boost: int = 1000  # tasks[].audit_boost: sample more while sampled traces are few
    embedder: str = "tfidf"  # or an encoder folder, or "tfidf+FOLDER" (tasks[].embedder)
    # refit.min_new_traces; 0: a day's worth. Time is compressed: the proxy's refit rule
    # is checked after every `step` requests, and a due fit runs before traffic goes on.
    min_new_traces: int = 0
    growth: float | None = None  # refit.growth (None: the proxy's default)
    step: int = 100
    port: int = 0
    timeout_s: float = 60.0
    # A smaller model as the task's one lane: {label: share of its inputs answered wrong}
    # (None: no lane), and per-call prices of teacher and lane (USD, `model_info`).
    lane_noise: dict[str, float] | None = None
    prices: tuple[float, float] | None = None


@dataclass
class Day:
    day: int
    outcomes: list[Outcome]
    served: str | None  # the model version served when the day began
    refits: list[RefitOutcome] = field(default_factory=list)  # fits that ran during the day
    refit_seconds: float = 0.0
    audits: int = 0  # handled requests also asked of the teacher, in the background
    fallback: str | None = None  # why the task answered from the teacher only, at day's end

    def _count(self, *decisions: str) -> int:
        return sum(o.decision in decisions for o in self.outcomes)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def handled(self) -> int:
        return self._count(HANDLED)

    @property
    def deferred(self) -> int:
        """Requests the teacher answered (no model, deferred, or a fallback)."""
        return sum(o.by_teacher for o in self.outcomes)

    @property
    def teacher_calls(self) -> int:
        """Every call the teacher received: the requests it answered, and the audits."""
        return self.deferred + self.audits

    @property
    def errors(self) -> list[str]:
        return [o.error or "?" for o in self.outcomes if o.decision == "error"]

    @property
    def coverage(self) -> float:
        return self.handled / self.requests if self.requests else 0.0

    @property
    def agreement_handled(self) -> float | None:
        handled = [o.agrees for o in self.outcomes if o.decision == HANDLED]
        return sum(handled) / len(handled) if handled else None

    @property
    def agreement(self) -> float | None:
        answered = [o.agrees for o in self.outcomes if o.decision != "error"]
        return sum(answered) / len(answered) if answered else None

    @property
    def versions(self) -> list[str]:
        return sorted({o.version for o in self.outcomes if o.version})


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by the nearest-rank rule; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def demo_config(
    teacher_url: str, workdir: Path, labels: Sequence[str], s: Settings, lane_url: str | None = None
) -> Config:
    raw: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "teacher",
                "litellm_params": {
                    "model": TEACHER_MODEL,
                    "api_key": "sk-simulated",
                    "api_base": teacher_url,
                },
            }
        ],
        "tasks": [
            {
                "name": TASK,
                "match": {"model": TASK},
                "teacher": "teacher",
                "labels": list(labels),
                "target": s.target,
                "confidence": s.confidence,
                "min_coverage": s.min_coverage,
                "embedder": s.embedder,
                "horizon": s.horizon,
                "audit_boost": s.audit_boost,
            }
        ],
        "server": {"port": s.port},
        "store": {"url": f"sqlite+aiosqlite:///{workdir / 'tracer.db'}"},
        "artifacts": {"dir": str(workdir / "artifacts")},
        # Fits run when the flywheel checks the refit rule (`Flywheel.tick`), between
        # steps of traffic; the background loop only reads evidence and settles candidates.
        "refit": {
            "min_new_traces": s.min_new_traces or s.per_day,
            "interval_seconds": 1e9,
            **({"growth": s.growth} if s.growth is not None else {}),
        },
    }
    models = raw["model_list"]
    if s.prices is not None:
        models[0]["model_info"] = {"input_cost_per_request": s.prices[0]}
    if lane_url is not None:
        models.append({"model_name": "small", "model_info": {"input_cost_per_request": (
            s.prices or (0.0, 0.0))[1]}, "litellm_params": {**models[0]["litellm_params"],
            "model": "openai/small", "api_base": lane_url}})  # fmt: skip
        raw["tasks"][0]["lanes"] = ["small"]
    return parse_config(raw, env={})


# -- the running pair: simulated teacher + proxy ----------------------------------------------
class _LoopCapture:
    """An ASGI wrapper that remembers the event loop the proxy's server runs on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None
        self.startup_error: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watch(message: Any) -> None:  # keep why start-up failed, for the error
            if message["type"] == "lifespan.startup.failed":
                lines = str(message.get("message") or "").strip().splitlines()
                errors = [x for x in lines if re.match(r"^[\w.]+(Error|Exception)\b", x)]
                self.startup_error = (errors or lines or ["start-up failed"])[-1]
            await send(message)

        await self.app(scope, receive, watch)


class Flywheel:
    """A proxy (in this process) in front of a simulated teacher; drive it day by day."""

    def __init__(self, url: str, app: Any, loop: asyncio.AbstractEventLoop, s: Settings) -> None:
        self.url = url  # ends in /v1
        self.app = app
        self.state: ProxyState = app.state.tracer
        self.loop = loop
        self.settings = s
        self.answered = 0  # requests the teacher answered so far, to know when all are stored
        self._history: list[dict[str, Any]] = []

    @classmethod
    @contextlib.contextmanager
    def running(cls, rows: Sequence[Row], workdir: Path, s: Settings) -> Iterator[Flywheel]:
        from ..app import create_app
        from ..server import uvicorn_options
        from .teacher import SimulatedTeacher, run_sim_teacher
        from .threaded import serve_in_thread

        workdir.mkdir(parents=True, exist_ok=True)
        labels = sorted({y for _, y in rows})
        teacher = SimulatedTeacher(
            dict(rows), labels=labels, latency_s=s.teacher_latency_ms / 1000.0
        )
        try:
            teacher_cm = run_sim_teacher(teacher)
            teacher_url = teacher_cm.__enter__()
        except (OSError, RuntimeError) as exc:
            raise DemoError(f"could not start the simulated teacher: {exc}") from None
        lane_cm = contextlib.nullcontext(None)
        if s.lane_noise is not None:
            lane = SimulatedTeacher(dict(rows), labels=labels, noise_by_label=s.lane_noise)
            lane_cm = run_sim_teacher(lane)  # type: ignore[assignment]
        try:
            config = demo_config(teacher_url, workdir, labels, s, lane_cm.__enter__())
            app = create_app(config, refit=False)
            wrapped = _LoopCapture(app)
            try:
                options = uvicorn_options(
                    keep_alive_s=config.server.keep_alive_seconds,
                    read_timeout_s=config.server.read_timeout_seconds,
                )
                proxy_cm = serve_in_thread(
                    wrapped, config.server.host, s.port, name="tracer-demo", **options
                )
                url = proxy_cm.__enter__()
            except (OSError, RuntimeError) as exc:
                why = wrapped.startup_error or str(exc)
                raise DemoError(
                    f"could not start the proxy on {config.server.host}:{s.port}: {why}"
                ) from None
            try:
                assert wrapped.loop is not None  # the lifespan ran before the server started
                yield cls(f"{url}/v1", app, wrapped.loop, s)
            finally:
                proxy_cm.__exit__(None, None, None)
        finally:
            lane_cm.__exit__(None, None, None)
            teacher_cm.__exit__(None, None, None)

    # -- one day ----------------------------------------------------------------------------
    def served(self) -> str | None:
        live = self.state.models.get(TASK)
        return live.version if live is not None else None

    def run_day(self, day: int, rows: Sequence[Row], on_step: Any = None) -> Day:
        """A day's rows in steps; after each, what the proxy's loop would do by then."""
        result = Day(day, [], self.served())
        audits_before = self.audits_done()
        step = max(1, self.settings.step)
        for start in range(0, len(rows), step):
            outcomes = asyncio.run(send_all(self.url, rows[start : start + step], self.settings))
            result.outcomes += outcomes
            self.answered += sum(o.by_teacher for o in outcomes)
            started = time.monotonic()
            fitted = self.tick()
            if fitted is not None:
                result.refits.append(fitted)
                result.refit_seconds += time.monotonic() - started
                if on_step is not None:
                    on_step(fitted)
        self.wait_for_traces()
        result.audits = int(self.audits_done() - audits_before)
        result.fallback = self.state.fallback_reason(TASK)
        return result

    def tick(self, timeout_s: float = 1800.0) -> RefitOutcome | None:
        """The background loop's work, now: read new evidence, settle candidates, and
        fit if the task is due (time is compressed, so traffic waits for the fit)."""
        self.wait_for_traces()
        task = self.state.config.task(TASK)
        assert task is not None

        async def work() -> RefitOutcome | None:
            await self.state.poll()
            if not await self.state.refits.due(task):
                return None
            outcome = await self.state.refits.refit(task)
            await self.state.poll()  # a fit that passed may be served at once
            return outcome

        future = asyncio.run_coroutine_threadsafe(work(), self.loop)
        try:
            return future.result(timeout_s)
        except BaseException:  # Ctrl-C or a timeout: cancelling the refit kills its child
            future.cancel()
            time.sleep(1.0)
            raise

    def audits_done(
        self, outcomes: Sequence[str] = ("agree", "disagree", "invalid", "error")
    ) -> float:
        return sum(self.metric("tracer_audits_total", task=TASK, outcome=o) for o in outcomes)

    def wait_for_traces(self, timeout_s: float = 60.0) -> None:
        """Until the audits settle and every teacher answer so far is in the store (the
        writer is asynchronous)."""
        deadline = time.monotonic() + timeout_s
        seen = -1.0
        while True:
            audited = self.audits_done()
            expected = self.answered + self.audits_done(("agree", "disagree", "invalid"))
            if audited == seen and self.traces_stored() >= expected:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"only {self.traces_stored():.0f} of {expected:.0f} teacher answers "
                    f"reached the trace store after {timeout_s:.0f} s"
                )
            seen = audited
            time.sleep(0.1)

    def history(self) -> list[dict[str, Any]]:
        """Every fit of the task so far, oldest first, with what became of it (the last
        one read while the proxy ran, once it has stopped)."""
        from .. import store

        if not self.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(
                store.refit_history(self.state.engine, TASK), self.loop
            )
            self._history = list(reversed(future.result(60)))
        return self._history

    # -- figures ----------------------------------------------------------------------------
    def metric(self, name: str, **labels: str) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels)
        return float(value or 0.0)

    def traces_stored(self) -> float:
        return sum(
            self.metric("tracer_traces_stored_total", task=TASK, valid=v) for v in ("true", "false")
        )

    def cost_saved(self) -> float:
        return self.metric("tracer_cost_saved_usd_total", task=TASK)

    def teacher_cost(self) -> tuple[float, int]:
        """Total teacher cost (USD) of the traces stored so far, and how many were priced."""
        return self.state.ledger.teacher_totals(TASK)

    def advice(self, version: str | None) -> str | None:
        """A refused fit in plain words: what it means and what to do (training.advice)."""
        from training.advice import advice_for_manifest

        manifest = self.state.models.store.manifest(TASK, version) if version else None
        return advice_for_manifest(manifest.raw, closed_labels=True) if manifest else None

    def refusal(self, version: str | None) -> str | None:
        """The parity gate's reason, with the best it reached, from a version's manifest."""
        if version is None:
            return None
        manifest = self.state.models.store.manifest(TASK, version)
        refusal = manifest.refusal if manifest is not None else None
        if refusal is None:
            return None
        extra = ", ".join(f"{k} {v:.3g}" for k, v in refusal.figures.items())
        return (
            refusal.reason if "(" in refusal.reason or not extra else f"{refusal.reason} ({extra})"
        )
