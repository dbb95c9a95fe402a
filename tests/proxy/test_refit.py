"""The refit loop on a real store: the gate decides, and only a deployed model is served."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import store
from proxy.config import TaskConfig
from proxy.refit import MIN_FRESH
from proxy.sim.synthetic import make_intents
from proxy.state import ProxyState
from tests.support import SHARED, intents_config

MINILM = SHARED / "models" / "all-MiniLM-L6-v2-onnx-int8"
NOWHERE = "http://127.0.0.1:9/v1"  # no teacher is called: traces are written directly


async def add_traces(
    state: ProxyState, rows: list[tuple[str, str]], source: str = "teacher"
) -> None:
    for text, label in rows:
        state.writer.submit(
            store.Trace(
                task="intents",
                input=text,
                label=label,
                raw_output=label,
                model="teacher",
                latency_ms=1.0,
                source=source,
            )
        )
    await state.writer.flush()


@contextlib.asynccontextmanager
async def serving_intents(
    tmp_path: Path, deploy: bool = True
) -> AsyncIterator[tuple[ProxyState, TaskConfig]]:
    """A started proxy state with 800 intents traces; with `deploy`, it serves v0001."""
    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    state.poll_seconds = 3600  # the test judges candidates itself: no poll may judge first
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(800, seed=1))
        if deploy:
            assert (await state.refits.refit(task)).outcome == "deployed"
        yield state, task
    finally:
        await state.stop()


def coin_flip_intents() -> list[tuple[str, str]]:
    """Intents where the teacher flips a coin between two of the labels."""
    rng = random.Random(3)
    labels = sorted({y for _, y in make_intents(200, seed=0)})
    return [
        (x, rng.choice(labels[:2]) if y in labels[:2] else y) for x, y in make_intents(1600, seed=4)
    ]


async def test_refused_and_crashed_fits_leave_the_served_model_alone(tmp_path: Path):
    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(800, seed=1))
        first = await state.refits.refit(task)
        assert first.outcome == "deployed", first.reason
        live = state.models.get("intents")
        assert live is not None and live.version == "v0001"

        # Now most traces carry random labels: no threshold can certify the target on
        # the 60% of traffic this task demands, so the gate must refuse.
        rng = random.Random(0)
        noise = [
            (f"noise {i} {rng.random()}", rng.choice(["balance", "refund"])) for i in range(900)
        ]
        await add_traces(state, noise)
        refused = await state.refits.refit(task.model_copy(update={"min_coverage": 0.6}))
        assert refused.outcome == "refused" and refused.reason
        assert state.models.store.current("intents") == "v0001"

        broken = task.model_copy(update={"embedder": str(tmp_path / "no-such-encoder")})
        crashed = await state.refits.refit(broken)
        assert crashed.outcome == "failed" and "lacks model.onnx" in (crashed.reason or "")
        assert state.models.store.current("intents") == "v0001"
        live = state.models.get("intents")
        assert live is not None and live.version == "v0001"
        outcomes = {
            (s.labels["outcome"], s.value)
            for m in state.metrics.refits.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        assert outcomes == {("deployed", 1.0), ("refused", 1.0), ("failed", 1.0)}
        last = await store.last_refit(state.engine, "intents")
        assert last is not None and last["outcome"] == "failed"
    finally:
        await state.stop()


async def test_a_candidate_is_judged_on_fresh_traffic_never_on_its_own_certificate(
    tmp_path: Path,
):
    """A refit that passes the gate while v0001 serves is a candidate; both are then
    scored on sampled traces neither has seen. The teacher now flips a coin on two
    intents: v0001 answers them and falls below the target there, the candidate leaves
    them to the teacher, and replaces it though it answers less. The fit left the
    newest fresh traces out, so it is judged at once."""
    async with serving_intents(tmp_path) as (state, task):
        # New traces where the teacher flips a coin between two intents: a refit still
        # passes the gate, but must leave that region to the teacher.
        flips = coin_flip_intents()
        await add_traces(state, flips[:800], source="deferred")
        await add_traces(state, flips[800:])
        pending = await state.refits.refit(task)
        assert pending.outcome == "candidate", pending
        assert state.models.store.current("intents") == "v0001"
        cut = await store.last_refit(state.engine, "intents")
        assert cut is not None
        # Out of the fit: the newest MIN_FRESH fresh traces. In it: every deferred one.
        assert cut["n_traces"] == 800 + 1600 - MIN_FRESH
        assert await store.count_fresh(state.engine, "intents", cut["last_trace_id"]) == MIN_FRESH
        judged = await state.promotion.check(task)
        assert judged is not None and judged.outcome == "deployed", judged
        reason = judged.reason or ""
        handled = re.findall(r"handle[s]? (\d+) \(agreement ([\d.]+)\)", reason)
        (mine, my_agreement), (theirs, their_agreement) = handled
        assert int(mine) < int(theirs), reason
        assert float(their_agreement) < task.target <= float(my_agreement), reason
        assert state.models.store.current("intents") == pending.version

        # A served version that was demoted: anything that passes the gate is better.
        checks = state.monitor.task("intents").check
        assert checks is not None
        checks.verdict = "demoted by a test"
        swapped = await state.refits.refit(task)
        assert swapped.outcome == "deployed", swapped
        assert state.models.store.current("intents") == swapped.version


async def test_a_candidate_without_enough_fresh_traces_waits_for_them(tmp_path: Path):
    """When fewer than MIN_FRESH fresh traces came since the last fit, the fit keeps them
    all, and the candidate is judged once fresh traffic has arrived after its data."""
    async with serving_intents(tmp_path) as (state, task):
        await add_traces(state, make_intents(700, seed=6), source="deferred")
        await add_traces(state, make_intents(MIN_FRESH - 1, seed=8))
        pending = await state.refits.refit(task)
        assert pending.outcome == "candidate", pending
        cut = await store.last_refit(state.engine, "intents")
        assert cut is not None and cut["n_traces"] == 800 + 700 + MIN_FRESH - 1
        assert await state.promotion.check(task) is None  # no fresh traffic yet
        fresh = [(f"{x} later", y) for x, y in make_intents(MIN_FRESH, seed=7)]
        await add_traces(state, fresh, source="audit")
        judged = await state.promotion.check(task)
        assert judged is not None and judged.outcome == "deployed", judged
        assert judged.reason is not None and f"on {MIN_FRESH} fresh traces" in judged.reason


async def test_a_pinned_task_keeps_its_version_through_refits_and_demotions(tmp_path: Path):
    """`tracer models pin` (or a rollback) holds the served version: a fit that passes
    waits as a candidate, even in fallback, and is judged only once the task is unpinned."""
    async with serving_intents(tmp_path) as (state, task):
        state.models.store.pin("intents")
        checks = state.monitor.task("intents").check
        assert checks is not None
        checks.verdict = "demoted by a test"  # in fallback, a passing fit would be served
        await add_traces(state, make_intents(800, seed=6))
        held = await state.refits.refit(task)
        assert held.outcome == "candidate" and "pinned" in (held.reason or ""), held
        await add_traces(state, [(f"{x} later", y) for x, y in make_intents(500, seed=7)],
                         source="audit")  # fmt: skip
        assert await state.promotion.check(task) is None  # held where the operator put it
        assert state.models.store.current("intents") == "v0001"

        assert state.models.store.unpin("intents") == "v0001"
        settled = await state.promotion.check(task)
        assert settled is not None and settled.outcome == "deployed", settled
        assert state.models.store.current("intents") == held.version


async def test_a_candidate_that_disagrees_on_fresh_traffic_is_rejected(tmp_path: Path):
    async with serving_intents(tmp_path) as (state, task):
        await add_traces(state, make_intents(800, seed=6))
        pending = await state.refits.refit(task)
        assert pending.outcome == "candidate", pending
        # The teacher has changed its mind about every intent since the cut.
        labels = sorted({y for _, y in make_intents(100)})
        moved = dict(zip(labels, labels[1:] + labels[:1], strict=True))
        fresh = [(f"{x} now", moved[y]) for x, y in make_intents(500, seed=7)]
        await add_traces(state, fresh, source="audit")
        judged = await state.promotion.check(task)
        assert judged is not None and judged.outcome == "rejected", judged
        assert "below the target" in (judged.reason or "")
        assert state.models.store.current("intents") == "v0001"


async def test_each_fit_spends_its_share_of_delta(tmp_path: Path):
    """The k-th fit certifies at delta * 6 / (pi^2 k^2): over all fits, at most delta."""
    import math

    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(900, seed=1))
        for _ in range(3):
            await state.refits.refit(task)
        history = list(reversed(await store.refit_history(state.engine, "intents")))
        delta = 1 - task.confidence
        for k, row in enumerate(history, start=1):
            assert row["attempt"] == k
            assert row["delta"] == pytest.approx(delta * 6 / (math.pi**2 * k**2))
            manifest = state.models.store.manifest("intents", row["version"])
            assert manifest is not None and manifest.delta == pytest.approx(row["delta"])
        assert sum(6 / (math.pi**2 * k**2) for k in range(1, 10_000)) < 1
    finally:
        await state.stop()


async def test_deferred_traces_train_but_never_calibrate(tmp_path: Path):
    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(600, seed=1))
        await add_traces(state, make_intents(900, seed=5)[600:], source="deferred")
        result = await state.refits.refit(state.config.tasks[0])
        assert result.outcome == "deployed", result.reason
        typed = state.models.store.manifest("intents", "v0001")
        assert typed is not None
        manifest = typed.raw
        assert manifest["data"]["deferred_fit_only"] > 0
        held = manifest["splits"]["calibration"] + manifest["splits"]["test"]
        held += manifest["splits"]["validation"]
        assert held <= manifest["data"]["representative"]
    finally:
        await state.stop()


async def test_only_the_lease_holder_fits(tmp_path: Path):
    config = intents_config(NOWHERE, tmp_path)
    one, two = ProxyState(config), ProxyState(config)
    await one.start(refit=False)
    await two.start(refit=False)
    try:
        engine = one.engine
        assert await store.acquire_lease(engine, "intents", one.refits.holder, 60)
        assert not await store.acquire_lease(engine, "intents", two.refits.holder, 60)
        skipped = await two.refits.refit(config.tasks[0])
        assert skipped.outcome == "skipped" and "another worker" in (skipped.reason or "")
        await store.release_lease(engine, "intents", one.refits.holder)
        assert await store.acquire_lease(engine, "intents", two.refits.holder, 60)
    finally:
        await asyncio.gather(one.stop(), two.stop())


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"needs the MiniLM encoder at {MINILM}")
async def test_a_task_can_refit_with_the_sentence_encoder(tmp_path: Path):
    task = {"target": 0.9, "embedder": str(MINILM)}
    state = ProxyState(intents_config(NOWHERE, tmp_path, task=task))
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(600, seed=2))
        result = await state.refits.refit(state.config.tasks[0])
        assert result.outcome == "deployed", result.reason
        live = state.models.get("intents")
        assert live is not None
        assert [p["kind"] for p in live.router.manifest.raw["embedder"]["parts"]] == ["encoder"]
    finally:
        await state.stop()


async def test_the_task_sets_the_out_of_distribution_check(tmp_path: Path):
    async with serving_intents(tmp_path, deploy=False) as (state, task):
        wider = await state.refits.refit(task.model_copy(update={"ood_quantile": 0.1}))
        off = await state.refits.refit(task.model_copy(update={"ood_quantile": 0.0}))
        manifests = [state.models.store.manifest("intents", o.version or "") for o in (wider, off)]
        assert manifests[0] is not None and manifests[0].raw["ood"]["quantile"] == 0.1
        assert manifests[1] is not None and manifests[1].raw["ood"] is None


async def test_failing_refits_show_in_metrics_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A task whose fits keep failing says so: a gauge counts failures in a row, and each
    is logged at warning level with its reason."""
    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    task = state.config.tasks[0]
    broken = task.model_copy(update={"embedder": str(tmp_path / "no-such-encoder")})
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(300, seed=1))
        with caplog.at_level("WARNING", logger="tracer.refit"):
            for _ in range(2):
                outcome = await state.refits.refit(broken)
                assert outcome.outcome == "failed"
        gauge = state.metrics.registry.get_sample_value(
            "tracer_refit_failures_in_a_row", {"task": "intents"}
        )
        assert gauge == 2
        assert "2 failed refits in a row" in caplog.text and "lacks model.onnx" in caplog.text
    finally:
        await state.stop()


async def test_a_users_modules_in_the_working_directory_cannot_replace_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The refit child must not import a training.py that sits where `tracer serve` runs."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    marker = tmp_path / "decoy-imported"
    (workdir / "training.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(9)\n"
    )
    (workdir / "router").mkdir()
    (workdir / "router" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(workdir)
    async with serving_intents(tmp_path) as (state, _task):
        live = state.models.get("intents")
        assert live is not None and live.version == "v0001"
    assert not marker.exists()


async def test_a_fit_refused_before_the_gate_spends_no_delta(tmp_path: Path):
    """Validation foretells a refusal: calibration is not tested, and the next fit keeps
    the first (largest) share of delta."""
    import math

    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        rng = random.Random(0)
        labels = sorted({y for _, y in make_intents(50)})
        await add_traces(
            state, [(f"noise {i} {rng.random()}", rng.choice(labels)) for i in range(300)]
        )
        refused = await state.refits.refit(task)
        assert refused.outcome == "refused" and "spent none of delta" in (refused.reason or "")
        await add_traces(state, make_intents(900, seed=1))
        passed = await state.refits.refit(task)
        assert passed.outcome == "deployed", passed
        first, second = reversed(await store.refit_history(state.engine, "intents"))
        assert first["delta"] == 0 and first["attempt"] == 1
        assert second["attempt"] == 1
        assert second["delta"] == pytest.approx((1 - task.confidence) * 6 / math.pi**2)
    finally:
        await state.stop()


async def test_no_fit_starts_while_a_candidate_waits_for_its_fresh_traces(tmp_path: Path):
    """A newer fit would supersede a candidate before it is judged: the task waits until
    the candidate is settled, or until it gained as many traces as the candidate was
    fitted on (the wait is bounded by the traffic). No fit runs: the rows are written."""
    config = intents_config(NOWHERE, tmp_path, task={"target": 0.9}, refit={"min_new_traces": 100})
    state = ProxyState(config)
    state.poll_seconds = 3600  # a poll would settle the hand-written candidates (no model)
    task = state.config.tasks[0]
    await state.start(refit=False)

    async def candidate(version: str) -> None:
        await store.record_refit(
            state.engine, task="intents", outcome="candidate", version=version,
            n_traces=await store.count_traces(state.engine, "intents"),
            last_trace_id=await store.last_id(state.engine, "traces", "intents"),
            reason="passed the gate", seconds=1.0, attempt=2, delta=0.001,
        )  # fmt: skip

    try:
        rows = make_intents(900, seed=1)
        await add_traces(state, rows[:300])
        await candidate("v0002")
        await add_traces(state, rows[300:500])  # grown by 200 >= 0.5 * 300 and >= 100
        assert not await state.refits.due(task)
        assert await state.refits.waits_for(task) == "v0002"
        state.monitor.task("intents").refit_wanted = True  # a shift's ask waits too
        assert not await state.refits.due(task)
        (row,) = await store.pending_candidates(state.engine, "intents")
        await store.settle_refit(state.engine, row["id"], "deployed", "a test")
        assert await state.refits.waits_for(task) is None
        assert await state.refits.due(task)  # settled: the growth rule decides again

        await candidate("v0003")  # fitted on 500 traces
        await add_traces(state, rows[500:899])
        assert not await state.refits.due(task)
        await add_traces(state, rows[899:])  # 400 since: still waiting
        assert await state.refits.waits_for(task) == "v0003"
        await add_traces(state, make_intents(100, seed=2))  # 500 since: twice the data
        assert await state.refits.waits_for(task) is None
        assert await state.refits.due(task)
    finally:
        await state.stop()
