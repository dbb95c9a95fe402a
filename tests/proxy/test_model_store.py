"""Model versions in the store: replicas on folders of their own share them through it.

Each test runs on SQLite (a file) and on PostgreSQL where `TRACER_TEST_PG_URL` names a
server (CI); two `SharedModelStore`s stand for two replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy import store
from proxy.cli import main
from proxy.model_files import MIRROR_KEY
from proxy.models import LiveModels, ModelStore
from proxy.shared_models import SharedModelStore
from proxy.store.schema import ModelFileRow
from router import ArtifactError

TASK = "intents"


@pytest.fixture
def replicas(
    store_url: str, fitted_intents: Path, tmp_path: Path
) -> Iterator[tuple[SharedModelStore, SharedModelStore]]:
    """Replica `a` starts on the folder an older proxy left (v0001 served, no store rows);
    replica `b` on an empty folder."""
    shutil.copytree(fitted_intents, tmp_path / "a")
    a = SharedModelStore(tmp_path / "a", store_url)
    b = SharedModelStore(tmp_path / "b", store_url)
    yield a, b
    a.close()
    b.close()


def live(models: LiveModels) -> str | None:
    models.refresh()
    served = models.get(TASK)
    return served.version if served is not None else None


def same_files(one: Path, two: Path) -> bool:
    names = sorted(p.name for p in one.iterdir())
    return names == sorted(p.name for p in two.iterdir()) and all(
        (one / n).read_bytes() == (two / n).read_bytes() for n in names
    )


def local(store: SharedModelStore, version: str) -> Path:
    """Where a replica keeps its copy of a version (`version_dir` would fetch it first)."""
    return store.root / TASK / "versions" / version


def copy_version(store: SharedModelStore, source: str) -> str:
    """A new version (a fit's output, here a copy), written where a fit here would write it."""
    version = store.next_version(TASK)
    shutil.copytree(local(store, source), local(store, version))
    return version


def test_a_version_published_by_one_replica_is_fetched_verified_and_served_by_another(replicas):
    a, b = replicas
    on_a, on_b = LiveModels(a, [TASK]), LiveModels(b, [TASK])
    assert live(on_a) == "v0001"  # the old folder was imported: files, then the pointer
    assert live(on_b) == "v0001"  # fetched from the store into b's empty folder
    assert same_files(local(a, "v0001"), local(b, "v0001"))
    mirror = json.loads((b.task_dir(TASK) / "current.json").read_text())
    assert mirror["version"] == "v0001" and MIRROR_KEY in mirror
    assert ModelStore(b.root).current(TASK) == "v0001"  # readers of files still see it

    # Numbers are reserved in the store: replicas reserving at once never share one.
    with ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(lambda s: s.next_version(TASK), [a, b] * 6))
    assert len(set(taken)) == 12 and "v0001" not in taken

    # A fit on a ends (its manifest is read, as the refit loop does): published at once,
    # so b can list it and read its manifest before it has a copy.
    v = copy_version(a, "v0001")
    manifest = a.manifest(TASK, v)
    assert manifest is not None and manifest.deployed
    b.reload()
    assert v in b.versions(TASK)
    theirs = b.manifest(TASK, v)
    assert theirs is not None and theirs.raw == manifest.raw
    assert not local(b, v).exists()  # the store's manifest: nothing fetched yet

    a.set_current(TASK, v)  # one row
    assert live(on_b) == v and live(on_a) == v
    pointer = b.pointer(TASK)
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (v, "v0001")
    assert same_files(local(a, v), local(b, v))

    assert b.rollback(TASK) == "v0001"  # on b: seen by a at its next poll
    assert live(on_a) == "v0001" and live(on_b) == "v0001"
    pointer = a.pointer(TASK)
    assert pointer is not None and pointer["previous"] == v
    with pytest.raises(ArtifactError, match="no version v9999"):
        a.set_current(TASK, "v9999")


def test_a_corrupted_cached_file_is_fetched_again_and_a_corrupted_store_copy_is_refused(
    replicas, caplog: pytest.LogCaptureFixture
):
    a, b = replicas
    on_b = LiveModels(b, [TASK])
    a.sync([TASK])
    v2, v3 = copy_version(a, "v0001"), copy_version(a, "v0001")
    a.set_current(TASK, v2)
    assert live(on_b) == v2
    a.set_current(TASK, "v0001")
    assert live(on_b) == "v0001"

    # b's cached copy of v2 is damaged; served again, it is fetched again and checked.
    head = local(b, v2) / "head.onnx"
    good = head.read_bytes()
    head.write_bytes(good[:-10] + b"0123456789")
    a.set_current(TASK, v2)
    with caplog.at_level(logging.WARNING, logger="tracer.models"):
        assert live(on_b) == v2
    assert head.read_bytes() == good
    assert any("does not match the store's checksum" in r.message for r in caplog.records)

    # The store's own copy of v3 is damaged: refused, and b keeps serving v2.
    async def damage(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                update(ModelFileRow)
                .where(ModelFileRow.version == v3, ModelFileRow.name == "head.onnx")
                .values(data=b"not the model")
            )

    assert a.publish(TASK, v3)
    a.db.run(damage)
    a.set_current(TASK, v3)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tracer.models"):
        for _ in range(3):
            assert live(on_b) == v2
    refusals = [r.message for r in caplog.records if "cannot serve version" in r.message]
    assert len(refusals) == 1 and "fails its checksum" in refusals[0], refusals
    assert not (local(b, v3) / "head.onnx").exists()
    assert not [p for p in local(b, v3).iterdir() if p.name.startswith(".")]  # no leftovers


def test_an_older_folder_is_imported_and_a_pointer_file_edited_by_hand_is_followed(replicas):
    a, b = replicas
    root = a.root
    # Before the upgrade: two versions on disk, v0001 served, a report added later.
    shutil.copytree(local(a, "v0001"), local(a, "v0002"))
    a.sync([TASK])
    assert a.versions(TASK) == ["v0001", "v0002"] and a.current(TASK) == "v0001"

    # An older tracer (or a person) points the task elsewhere: the store follows.
    ModelStore(root).set_current(TASK, "v0002")
    a.sync([TASK])
    b.sync([TASK])
    assert b.current(TASK) == "v0002"
    assert MIRROR_KEY in json.loads((root / TASK / "current.json").read_text())

    # A stale pointer file (older than the store's pointer) is not an instruction.
    stale = root / TASK / "current.json"
    stale.write_text(json.dumps({"version": "v0001"}))
    past = time.time() - 3600
    os.utime(stale, (past, past))
    a.sync([TASK])
    assert a.current(TASK) == "v0002"
    assert json.loads(stale.read_text())["version"] == "v0002"  # rewritten as a copy

    # A file a published folder gains afterwards (a report) is added to the store.
    (local(a, "v0001") / "notes.txt").write_text("written after the fit")
    a.sync([TASK])
    found = b.latest_report(TASK, "notes.txt")
    assert found is not None and found.read_text() == "written after the fit"
    assert found.parent == local(b, "v0001")
    assert b.latest_report(TASK) == local(b, "v0002") / "report.html"


def test_a_folder_served_by_one_store_is_served_by_a_new_store_too(
    fitted_intents: Path, tmp_path: Path
):
    """The pointer file a store mirrored still says what was served when the folder is
    reused with a new store (a new database, the same `artifacts.dir`)."""
    root = tmp_path / "artifacts"
    shutil.copytree(fitted_intents, root)
    first = SharedModelStore(root, f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    first.sync([TASK])
    assert MIRROR_KEY in json.loads((root / TASK / "current.json").read_text())
    first.close()
    second = SharedModelStore(root, f"sqlite+aiosqlite:///{tmp_path / 'two.db'}")
    try:
        second.sync([TASK])
        assert second.current(TASK) == "v0001"
    finally:
        second.close()


async def record_outcomes(url: str, outcomes: dict[str, str]) -> None:
    engine = store.create_engine(url)
    try:
        await store.create_schema(engine)
        for version, outcome in outcomes.items():
            await store.record_refit(
                engine, task=TASK, outcome=outcome, version=version, n_traces=100,
                last_trace_id=0, reason=None, seconds=1.0, attempt=1, delta=0.05,
            )  # fmt: skip
    finally:
        await engine.dispose()


def test_models_list_and_rollback_act_on_the_store(
    store_url: str, fitted_intents: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    a = SharedModelStore(tmp_path / "a", store_url)
    shutil.copytree(fitted_intents, tmp_path / "a", dirs_exist_ok=True)
    try:
        a.sync([TASK])
        a.set_current(TASK, copy_version(a, "v0001"))
    finally:
        a.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list: [{model_name: t, litellm_params: {model: openai/t, api_key: k}}]\n"
        f"tasks: [{{name: {TASK}, match: {{model: {TASK}}}, teacher: t}}]\n"
        f"store: {{url: '{store_url}'}}\n"
        f"artifacts: {{dir: {tmp_path / 'elsewhere'}}}\n"  # another replica's empty folder
    )
    asyncio.run(record_outcomes(store_url, {"v0001": "deployed", "v0002": "not_better"}))
    assert main(["models", "list", "--config", str(config), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # Both passed the gate (status); the refit loop served one and turned the other
    # away (a pointer set by hand, here, serves it anyway).
    assert [(r["version"], r["serving"], r["status"], r["refit"]) for r in rows] == [
        ("v0001", False, "deployed", "deployed"), ("v0002", True, "deployed", "not_better"),
    ]  # fmt: skip
    assert main(["models", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:4] == ["task", "version", "status", "refit"]
    assert listed[2].split()[:4] == ["*", TASK, "v0002", "deployed"]
    assert listed[2].split()[4] == "not_better"
    assert main(["models", "rollback", TASK, "--config", str(config)]) == 0
    assert "now serves v0001, pinned" in capsys.readouterr().out
    assert main(["models", "list", "--config", str(config), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["serving"], r["pinned"]) for r in listed] == [(True, True), (False, False)]
    # Run again, a rollback goes further back, never forward: here there is nothing older.
    assert main(["models", "rollback", TASK, "--config", str(config)]) == 1
    assert "no older certified version" in capsys.readouterr().err
    assert main(["models", "pin", TASK, "v0002", "--config", str(config)]) == 0
    assert "now serves v0002, pinned" in capsys.readouterr().out
    assert main(["models", "unpin", TASK, "--config", str(config)]) == 0
    assert "not pinned (it serves v0002)" in capsys.readouterr().out
    assert main(["models", "list", "--config", str(config), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["serving"], r["pinned"]) for r in listed] == [(False, False), (True, False)]
    assert (tmp_path / "elsewhere" / TASK / "versions" / "v0001" / "manifest.json").is_file()
