"""The refit loop on a tool task: names and whole calls spend two budgets of delta."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from proxy import store
from proxy.sim.synthetic import make_tool_steps
from proxy.state import ProxyState
from tests.support import intents_config, tool_traces

NOWHERE = "http://127.0.0.1:9/v1"  # no teacher is called: traces are written directly


async def test_a_tool_tasks_whole_calls_spend_a_budget_of_their_own(tmp_path: Path):
    """Names: the k-th fit at (delta / 2) 6 / (pi^2 k^2). Whole calls: the j-th fit that
    tests them, counting a row from before that budget as one, at the same shares."""
    task_keys = {"kind": "tools", "labels": None, "target": 0.9, "min_coverage": 0.05}
    state = ProxyState(intents_config(NOWHERE, tmp_path, task=task_keys))
    task = state.config.tasks[0]
    await state.start(refit=False)
    try:
        for t in tool_traces(make_tool_steps(1500, seed=4)):
            state.writer.submit(
                store.Trace(task="intents", input=t.input, label=t.label,
                            raw_output=t.raw_output, model="teacher", latency_ms=1.0,
                            source="teacher")
            )  # fmt: skip
        await state.writer.flush()
        await store.record_refit(
            state.engine, task="intents", outcome="refused", version=None, n_traces=0,
            last_trace_id=0, reason="before whole calls had a budget", seconds=0.0,
            attempt=1, delta=0.001,
        )  # fmt: skip
        await store.record_refit(
            state.engine, task="intents", outcome="refused", version=None, n_traces=0,
            last_trace_id=0, reason="whole calls foretold refused", seconds=0.0,
            attempt=2, delta=0.001, whole_delta=0.0,
        )  # fmt: skip
        for _ in range(2):
            await state.refits.refit(task)
        rows = list(reversed(await store.refit_history(state.engine, "intents")))[2:]
        half = (1 - task.confidence) / 2
        for k, row in enumerate(rows, start=3):
            assert row["delta"] == pytest.approx(half * 6 / (math.pi**2 * k**2))
            j = k - 1  # the second row tested names only
            assert row["whole_delta"] == pytest.approx(half * 6 / (math.pi**2 * j**2))
            manifest = state.models.store.manifest("intents", row["version"])
            assert manifest is not None
            assert manifest.raw["tools"]["whole_delta_spent"] == pytest.approx(row["whole_delta"])
    finally:
        await state.stop()
