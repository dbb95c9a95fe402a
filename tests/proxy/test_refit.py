"""The refit loop on a real store: the gate decides, and only a deployed model is served."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import store
from proxy.app import ProxyState
from proxy.config import TaskConfig
from proxy.synthetic import make_intents
from tests.support import SHARED, intents_config

MINILM = SHARED / "models" / "all-MiniLM-L6-v2-onnx-int8"
NOWHERE = "http://127.0.0.1:9/v1"  # no teacher is called: traces are written directly


async def add_traces(
    state: ProxyState, rows: list[tuple[str, str]], source: str = "teacher"
) -> None:
    for text, label in rows:
        state.record_trace(
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
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(800, seed=1))
        if deploy:
            assert (await state.refit_loop.refit(task)).outcome == "deployed"
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
        first = await state.refit_loop.refit(task)
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
        refused = await state.refit_loop.refit(task.model_copy(update={"min_coverage": 0.6}))
        assert refused.outcome == "refused" and refused.reason
        assert state.models.store.current("intents") == "v0001"

        broken = task.model_copy(update={"embedder": str(tmp_path / "no-such-encoder")})
        crashed = await state.refit_loop.refit(broken)
        assert crashed.outcome == "failed" and "encoder folder lacks" in (crashed.reason or "")
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


async def test_a_model_that_certifies_less_does_not_replace_the_served_one(tmp_path: Path):
    async with serving_intents(tmp_path) as (state, task):
        served = state.models.get("intents")
        assert served is not None and served.certified_coverage > 0.5

        # New traces where the teacher flips a coin between two intents: a refit still
        # passes the gate, but must leave that region to the teacher, so it certifies
        # less coverage and must not be swapped in...
        await add_traces(state, coin_flip_intents())
        worse = await state.refit_loop.refit(task)
        assert worse.outcome == "not_better", worse
        assert "v0001 stays" in (worse.reason or "")
        assert state.models.store.current("intents") == "v0001"

        # ...unless the served model has fallen back, when anything that passes is better.
        state.fallbacks["intents"] = "drift"
        swapped = await state.refit_loop.refit(task)
        assert swapped.outcome == "deployed", swapped
        assert state.models.store.current("intents") == swapped.version


async def test_deferred_traces_train_but_never_calibrate(tmp_path: Path):
    state = ProxyState(intents_config(NOWHERE, tmp_path, task={"target": 0.9}))
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(600, seed=1))
        await add_traces(state, make_intents(900, seed=5)[600:], source="deferred")
        result = await state.refit_loop.refit(state.config.tasks[0])
        assert result.outcome == "deployed", result.reason
        manifest = state.models.store.manifest("intents", "v0001")
        assert manifest is not None
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
        assert await store.acquire_lease(engine, "intents", one.refit_loop.holder, 60)
        assert not await store.acquire_lease(engine, "intents", two.refit_loop.holder, 60)
        skipped = await two.refit_loop.refit(config.tasks[0])
        assert skipped.outcome == "skipped" and "another worker" in (skipped.reason or "")
        await store.release_lease(engine, "intents", one.refit_loop.holder)
        assert await store.acquire_lease(engine, "intents", two.refit_loop.holder, 60)
    finally:
        await asyncio.gather(one.stop(), two.stop())


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"needs the MiniLM encoder at {MINILM}")
async def test_a_task_can_refit_with_the_sentence_encoder(tmp_path: Path):
    task = {"target": 0.9, "embedder": str(MINILM)}
    state = ProxyState(intents_config(NOWHERE, tmp_path, task=task))
    await state.start(refit=False)
    try:
        await add_traces(state, make_intents(600, seed=2))
        result = await state.refit_loop.refit(state.config.tasks[0])
        assert result.outcome == "deployed", result.reason
        live = state.models.get("intents")
        assert live is not None
        assert [p["kind"] for p in live.router.manifest["embedder"]["parts"]] == ["encoder"]
    finally:
        await state.stop()


async def test_the_task_sets_the_out_of_distribution_check(tmp_path: Path):
    async with serving_intents(tmp_path, deploy=False) as (state, task):
        wider = await state.refit_loop.refit(task.model_copy(update={"ood_quantile": 0.1}))
        off = await state.refit_loop.refit(task.model_copy(update={"ood_quantile": 0.0}))
        manifests = [state.models.store.manifest("intents", o.version or "") for o in (wider, off)]
        assert manifests[0] is not None and manifests[0]["ood"]["quantile"] == 0.1
        assert manifests[1] is not None and manifests[1]["ood"] is None


async def test_the_served_model_is_judged_by_the_coverage_it_delivered(tmp_path: Path):
    async with serving_intents(tmp_path) as (state, task):
        # v0001 certified more than half the traffic, but live it handled one request in ten.
        for i in range(600):
            state.record_decision(
                store.Decision(
                    task="intents",
                    decision="handled" if i % 10 == 0 else "deferred",
                    reason="test",
                    latency_ms=1.0,
                    model_version="v0001",
                )
            )
        await state.writer.flush()
        assert await store.served_coverage(state.engine, "intents", "v0001") == (60, 600)
        # The coin-flip traces that made a refit `not_better` against v0001's certified
        # coverage (test above) now face the coverage v0001 actually delivered.
        await add_traces(state, coin_flip_intents())
        swapped = await state.refit_loop.refit(task)
        assert swapped.outcome == "deployed", swapped


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
                outcome = await state.refit_loop.refit(broken)
                assert outcome.outcome == "failed"
        gauge = state.metrics.registry.get_sample_value(
            "tracer_refit_failures_in_a_row", {"task": "intents"}
        )
        assert gauge == 2
        assert "2 failed refits in a row" in caplog.text and "encoder folder lacks" in caplog.text
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
