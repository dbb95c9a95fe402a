"""A candidate is judged on fresh, representative traffic, and gets it within bounded traffic.

No fit runs here: candidates are refit rows written directly, so the rules of
`proxy.promotion`, `proxy.sampling` and `proxy.refit` are tested on their own.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy import promotion, store
from proxy.config import TaskConfig
from proxy.promotion import Comparison, compare
from proxy.refit import MIN_FRESH
from proxy.state import ProxyState
from tests.support import intents_config

NOWHERE = "http://127.0.0.1:9/v1"  # no teacher is called: traces are written directly
FLOOR = 0.02


def texts(n: int, tag: str) -> Iterator[str]:
    return (f"{tag} request {i}" for i in range(n))


async def add(state: ProxyState, n: int, source: str, tag: str = "t") -> None:
    for text in texts(n, f"{tag}-{source}"):
        state.writer.submit(
            store.Trace(
                task="intents", input=text, label="balance", raw_output="balance",
                model="teacher", latency_ms=1.0, source=source,
            )
        )  # fmt: skip
    await state.writer.flush()


async def candidate(state: ProxyState, version: str) -> int:
    """A pending candidate fitted on every trace so far; its data cut (last trace id)."""
    cut = await store.last_id(state.engine, "traces", "intents")
    await store.record_refit(
        state.engine, task="intents", outcome="candidate", version=version,
        n_traces=await store.count_traces(state.engine, "intents"), last_trace_id=cut,
        reason="passed the gate", seconds=1.0, attempt=2, delta=0.001,
    )  # fmt: skip
    return cut


@contextlib.asynccontextmanager
async def started(tmp_path: Path, **task: Any) -> AsyncIterator[tuple[ProxyState, TaskConfig]]:
    settings = {"target": 0.9, "audit_rate": FLOOR, "audit_boost": 0, "probation_boost": 40}
    state = ProxyState(intents_config(NOWHERE, tmp_path, task=settings | task))
    state.poll_seconds = 3600  # the test judges candidates itself: no poll may judge first
    await state.start(refit=False)
    try:
        yield state, state.config.tasks[0]
    finally:
        await state.stop()


async def test_a_waiting_candidate_raises_the_sampling_rate_until_it_has_its_fresh_traces(
    tmp_path: Path,
):
    async with started(tmp_path) as (state, task):
        await add(state, 300, "teacher")
        await state.sampling.count()
        assert state.sampling.rate(task) == FLOOR
        await candidate(state, "v0002")
        await state.sampling.count()  # the background poll sees it; a request reads memory
        assert state.sampling.rate(task) == 1.0  # probation_boost / (0 fresh + 1)

        # Only traces sampled independently of the served version count as fresh.
        await add(state, 50, "deferred")
        await add(state, 50, "narrowed")
        await add(state, 79, "explore")
        assert state.sampling.rate(task) == pytest.approx(40 / 80)  # counted as stored
        await state.sampling.count()
        assert state.sampling.rate(task) == pytest.approx(40 / 80)  # and recounted alike
        await add(state, MIN_FRESH - 79, "audit")
        await state.sampling.count()
        assert state.sampling.rate(task) == FLOOR  # the evidence is in: back to the floor

        # A newer candidate starts its own count; a settled one raises nothing.
        await candidate(state, "v0003")
        await state.sampling.count()
        assert state.sampling.rate(task) == 1.0
        for row in await store.pending_candidates(state.engine, "intents"):
            await store.settle_refit(state.engine, row["id"], "not_better", "a test")
        await state.sampling.count()
        assert state.sampling.rate(task) == FLOOR

        # probation_boost 0 turns the boost off, as it does a new version's probation.
        await candidate(state, "v0004")
        await state.sampling.count()
        assert state.sampling.rate(task.model_copy(update={"probation_boost": 0})) == FLOOR


async def test_a_waiting_candidate_gets_its_fresh_traces_within_bounded_traffic(tmp_path: Path):
    """At the floor alone, MIN_FRESH fresh traces take MIN_FRESH / 2% = 10,000 requests;
    boosted, about b + (MIN_FRESH^2 - b^2) / 2b = 520 (b = probation_boost = 40)."""
    async with started(tmp_path) as (state, task):
        await add(state, 300, "teacher")
        await candidate(state, "v0002")
        await state.sampling.count()
        state.sampling.rng = random.Random(7)
        requests = fresh = 0
        while fresh < MIN_FRESH and requests < 20_000:
            requests += 1
            if state.sampling.draw(task):  # an audit or an explore draw: a fresh trace
                state.sampling.stored(task, "explore")
                fresh += 1
        assert requests < 700, requests


async def test_a_candidate_is_judged_only_on_fresh_representative_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Fresh: after the candidate's data cut, so in no split of its fit, and sampled
    independently of the served version (neither `deferred` nor `narrowed`)."""
    judged: list[list[tuple[int, str, str | None, str | None]]] = []

    def compare(_c: Any, _s: Any, rows: list[Any], *_args: Any) -> Comparison:
        judged.append(rows)
        return Comparison(len(rows), 0, 0, 0, 0, None, rejected=True)

    async with started(tmp_path) as (state, task):
        monkeypatch.setattr(promotion, "compare", compare)
        served = SimpleNamespace(version="v0001", router=object())
        monkeypatch.setattr(state.models, "get", lambda _task: served)
        monkeypatch.setattr(state.promotion, "_router", lambda _task, _version: object())
        await add(state, 300, "teacher")
        cut = await candidate(state, "v0002")
        await add(state, 150, "audit")
        await add(state, 60, "deferred")
        await add(state, 60, "narrowed")
        assert await state.promotion.check(task) is None  # 150 fresh: not yet
        await add(state, MIN_FRESH - 150, "explore")
        outcome = await state.promotion.check(task)
        assert outcome is not None and outcome.outcome == "rejected", outcome
        sources = {r["id"]: r["source"] async for r in store.iter_traces(state.engine, "intents")}
        (rows,) = judged
        assert len(rows) == MIN_FRESH
        assert all(row[0] > cut for row in rows)
        assert {sources[row[0]] for row in rows} == {"audit", "explore"}


class FixedRouter:
    """Answers `answers[i]` for row i (None: defers), as a served router would."""

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.manifest = SimpleNamespace(answer=lambda label: label)

    def predict_batch(self, texts: list[str]) -> list[Any]:
        return [SimpleNamespace(handled=a is not None, label=a) for a in self.answers[: len(texts)]]


def test_a_version_that_answers_more_only_by_answering_wrongly_is_not_clearly_better():
    rows = [(i, f"text {i}", "right", "right") for i in range(200)]
    # served: answers all 200, 20 of them wrongly; candidate: right on 160, defers on 40,
    # half of them where the served version is wrong
    served = ["wrong" if i < 20 else "right" for i in range(200)]
    candidate = [None if i < 40 else "right" for i in range(200)]
    c = compare(FixedRouter(candidate), FixedRouter(served), rows, 0.9, 0.05, "text")  # type: ignore[arg-type]
    assert (c.candidate_better, c.served_better) == (20, 20)
    assert c.served_agreement == pytest.approx(0.9) and c.candidate_agreement == 1.0
    assert not c.served_clearly_better
    # answering right where the other defers is what counts
    c = compare(FixedRouter(served[20:] + ["right"] * 20), FixedRouter(candidate), rows, 0.9,
                0.05, "text")  # type: ignore[arg-type]  # fmt: skip
    assert c.served_better == 0 and c.candidate_better == 40


def test_a_served_version_below_the_target_on_fresh_traffic_is_never_preferred():
    rows = [(i, f"text {i}", "right", "right") for i in range(200)]
    served = ["wrong" if i < 20 else "right" for i in range(200)]  # 0.90
    candidate = ["right" if i < 50 else None for i in range(200)]
    c = compare(FixedRouter(candidate), FixedRouter(served), rows, 0.95, 0.05, "text")  # type: ignore[arg-type]
    assert c.served_clearly_better  # it answers far more, mostly right...
    assert c.served_below(0.95) and not c.served_below(0.9)  # ...but below the target


@pytest.mark.parametrize(
    ("served_agreement", "outcome"), [(0.95, "not_better"), (0.85, "deployed")]
)
async def test_a_clearly_better_served_version_stays_unless_it_is_below_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served_agreement: float, outcome: str
):
    verdict = Comparison(200, 40, 150, 5, 60, 1.0, False, served_agreement)
    assert verdict.served_clearly_better

    async def deploy(*_args: Any) -> None:
        return None

    async with started(tmp_path) as (state, task):
        monkeypatch.setattr(promotion, "compare", lambda *_args: verdict)
        monkeypatch.setattr(promotion, "deploy", deploy)
        served = SimpleNamespace(version="v0001", router=object())
        monkeypatch.setattr(state.models, "get", lambda _task: served)
        monkeypatch.setattr(state.promotion, "_router", lambda _task, _version: object())
        await add(state, 300, "teacher")
        await candidate(state, "v0002")
        await add(state, MIN_FRESH, "audit")
        judged = await state.promotion.check(task)
        assert judged is not None and judged.outcome == outcome, judged
        assert f"v0001 handles 150 (agreement {served_agreement:.3f})" in (judged.reason or "")
