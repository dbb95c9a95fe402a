"""The live checks read the store: a demotion and a shift alarm, and what they change."""

from __future__ import annotations

import random
from pathlib import Path

from proxy import store
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.monitor import SHIFT_SAMPLING, Baseline, Monitor
from proxy.sampling import SamplingPolicy
from router.manifest import Calibration

TASK = {"name": "t", "match": {"model": "t"}, "teacher": "m", "target": 0.95}


def config(tmp_path: Path, **task: object):
    raw = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "tasks": [{**TASK, **task}],
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 's.db'}"},
    }
    return parse_config(raw, env={})


async def started(tmp_path: Path, **task: object):
    cfg = config(tmp_path, **task)
    engine = store.create_engine(cfg.store.url)
    await store.create_schema(engine)
    writer = store.StoreWriter(engine, linger_s=0)
    writer.start()
    metrics = Metrics()
    monitor = Monitor(cfg, engine, metrics)
    return cfg, engine, writer, metrics, monitor


async def test_a_version_whose_audits_disagree_is_demoted_and_asks_for_a_refit(tmp_path):
    _cfg, engine, writer, metrics, monitor = await started(tmp_path)
    monitor.serve("t", "v0001", Baseline(0.01))
    rng = random.Random(1)
    for _ in range(300):  # an older version's audits say nothing about v0001
        writer.submit(store.Audit("t", "v0000", agrees=False))
    for _ in range(2000):
        writer.submit(store.Audit("t", "v0001", agrees=rng.random() < 0.85))
    await writer.flush()
    await monitor.poll()
    checks = monitor.task("t")
    reason = monitor.fallback_reason("t")
    assert reason is not None and "v0001" in reason and "below the target 0.95" in reason
    assert checks.refit_wanted
    assert metrics.registry.get_sample_value("tracer_fallback_active", {"task": "t"}) == 1
    # A new version starts from nothing.
    monitor.serve("t", "v0002", Baseline(0.01))
    assert monitor.fallback_reason("t") is None and not checks.refit_wanted
    await writer.close()
    await engine.dispose()


async def test_a_restarted_proxy_rebuilds_the_evidence_from_the_store(tmp_path):
    cfg, engine, writer, _metrics, _monitor = await started(tmp_path)
    for _ in range(100):
        writer.submit(store.Audit("t", "v0001", agrees=False))
    await writer.flush()
    fresh = Monitor(cfg, engine, Metrics())
    fresh.serve("t", "v0001", Baseline())
    await fresh.poll()
    assert fresh.task("t").version_audits == 100
    assert fresh.fallback_reason("t") is not None
    await writer.close()
    await engine.dispose()


async def test_a_swap_while_the_poll_reads_still_counts_the_versions_earlier_audits(
    tmp_path, monkeypatch
):
    """Another worker served v0002 first, and its audits were read while this worker
    served v0001. When this worker swaps during a later read, they still count."""
    _cfg, engine, writer, _metrics, monitor = await started(tmp_path)
    monitor.serve("t", "v0001", Baseline())
    for version, n in (("v0001", 100), ("v0002", 50)):
        for _ in range(n):
            writer.submit(store.Audit("t", version, agrees=True))
    await writer.flush()
    await monitor.poll()
    assert monitor.task("t").version_audits == 100
    for _ in range(10):
        writer.submit(store.Audit("t", "v0002", agrees=True))
    await writer.flush()
    read = store.audits_after

    async def swapped_while_reading(*args: object):
        rows = await read(*args)
        monitor.serve("t", "v0002", Baseline())  # lands while the read is awaited
        return rows

    monkeypatch.setattr(store, "audits_after", swapped_while_reading)
    await monitor.poll()
    monkeypatch.setattr(store, "audits_after", read)
    await monitor.poll()
    assert monitor.task("t").version_audits == 60
    await writer.close()
    await engine.dispose()


async def test_a_jump_in_out_of_distribution_inputs_samples_everything(tmp_path):
    cfg, engine, writer, metrics, monitor = await started(tmp_path, audit_boost=0)
    sampling = SamplingPolicy(cfg, engine, metrics, monitor, random.Random(0))
    task = cfg.tasks[0]
    monitor.serve("t", "v0001", Baseline(0.01))
    for _ in range(2000):  # probation over: 2000 audits that agree
        writer.submit(store.Audit("t", "v0001", agrees=True))
    rng = random.Random(2)
    for _ in range(1000):
        writer.submit(
            store.Decision("t", "handled", "r", 1.0, model_version="v0001", ood=rng.random() < 0.01)
        )
    await writer.flush()
    await monitor.poll()
    assert not monitor.task("t").shift_sampling
    assert sampling.rate(task) < 0.5
    for _ in range(400):
        writer.submit(
            store.Decision("t", "deferred", "r", 1.0, model_version="v0001", ood=rng.random() < 0.3)
        )
    await writer.flush()
    await monitor.poll()
    checks = monitor.task("t")
    assert checks.shift_sampling and checks.refit_wanted
    assert sampling.rate(task) == 1.0
    assert metrics.registry.get_sample_value("tracer_shift_score", {"task": "t"}) >= 1.0
    for _ in range(SHIFT_SAMPLING):  # fresh evidence gathered: back to the usual rate
        writer.submit(store.Audit("t", "v0001", agrees=True))
    await writer.flush()
    await monitor.poll()
    assert not checks.shift_sampling and sampling.rate(task) < 0.5
    await writer.close()
    await engine.dispose()


async def test_a_jump_in_inputs_the_model_is_unsure_of_is_a_shift_too(tmp_path):
    # Calibration: 1% out of distribution, and 5% more scored below 0.6. Today's inputs
    # are no further from the classes, but a third of them score below 0.6.
    cfg, engine, writer, _metrics, monitor = await started(tmp_path, audit_boost=0)
    monitor.serve("t", "v0001", Baseline(0.06, low_accept=0.6))
    rng = random.Random(3)

    def decisions(n: int, unsure: float) -> None:
        for _ in range(n):
            score = rng.uniform(0.2, 0.6) if rng.random() < unsure else rng.uniform(0.6, 1.0)
            ood = rng.random() < 0.01
            writer.submit(store.Decision("t", "handled", "r", 1.0, accept_score=score,
                                         model_version="v0001", ood=ood))  # fmt: skip

    decisions(2000, unsure=0.05)
    await writer.flush()
    await monitor.poll()
    assert not monitor.task("t").shift_sampling
    decisions(300, unsure=0.33)
    await writer.flush()
    await monitor.poll()
    checks = monitor.task("t")
    assert checks.shift_sampling and checks.refit_wanted
    # an older artifact, which recorded no low score, watches out-of-distribution inputs only
    older = Monitor(cfg, engine, Metrics())
    older.serve("t", "v0001", Baseline.of(Calibration(0.5, 100, 0.9, 0.96, 0.95, 0.01)))
    await older.poll()
    assert not older.task("t").shift_sampling
    await writer.close()
    await engine.dispose()


async def test_a_new_version_is_audited_at_a_high_rate_until_it_has_evidence(tmp_path):
    cfg, engine, writer, metrics, monitor = await started(tmp_path, audit_boost=0)
    sampling = SamplingPolicy(cfg, engine, metrics, monitor, random.Random(0))
    task = cfg.tasks[0]
    assert sampling.rate(task) == task.audit_rate  # no version served: the floor
    monitor.serve("t", "v0001", Baseline())
    assert sampling.rate(task) == 1.0
    drawn = sum(sampling.draw(task, "v0001") for _ in range(2000))
    # probation_boost / (audits + 1): the audits grow like the square root of the traffic
    assert 200 <= drawn <= 500, drawn
    assert sampling.rate(task) < 0.2
    await writer.close()
    await engine.dispose()
