"""Served versions: a bad pointer or artifact leaves a task on what it had, with one warning."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.models import LiveModels, ModelStore
from proxy.sim.synthetic import make_intents
from proxy.state import ProxyState
from router import Router
from tests.support import intents_config, running_proxy, serve_fitted_intents


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, make_intents(600, seed=2))
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_pointer_that_is_not_utf8_warns_once_and_the_proxy_starts(
    fitted: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = _copy(fitted, tmp_path / "a")
    (root / "intents" / "current.json").write_bytes(b'{"version": "v0001\xff\xfe"}')
    models = LiveModels(ModelStore(root), ["intents"])
    with caplog.at_level(logging.WARNING, logger="tracer.models"):
        for _ in range(3):
            models.refresh()
    assert models.get("intents") is None
    assert len([r for r in caplog.records if "unreadable model pointer" in r.message]) == 1
    config = intents_config("http://127.0.0.1:9/v1", tmp_path, artifacts=root)
    with running_proxy(config) as base:  # it starts, and the task answers from the teacher
        assert httpx.get(f"{base.removesuffix('/v1')}/healthz").status_code == 200


@pytest.mark.parametrize("version", ["../../elsewhere", "/tmp", "v0001/../../x", "", 3])
def test_a_pointer_outside_the_task_is_never_served(
    fitted: Path, tmp_path: Path, version: object, caplog: pytest.LogCaptureFixture
):
    root = _copy(fitted, tmp_path / "b")
    outside = tmp_path / "elsewhere"
    _copy(root / "intents" / "versions" / "v0001", outside)
    (root / "intents" / "current.json").write_text(json.dumps({"version": version}))
    models = LiveModels(ModelStore(root), ["intents"])
    with caplog.at_level(logging.WARNING, logger="tracer.models"):
        models.refresh()
        models.refresh()
    assert models.get("intents") is None
    assert len([r for r in caplog.records if "not a version of task" in r.message]) == 1


def test_a_tampered_artifact_is_refused_once_and_the_last_good_version_stays(
    fitted: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = _copy(fitted, tmp_path / "c")
    store = ModelStore(root)
    models = LiveModels(store, ["intents"])
    models.refresh()
    assert models.get("intents") is not None
    _copy(store.version_dir("intents", "v0001"), store.version_dir("intents", "v0002"))
    head = store.version_dir("intents", "v0002") / "head.onnx"
    head.write_bytes(head.read_bytes()[:-10] + b"0123456789")
    store.set_current("intents", "v0002")
    with caplog.at_level(logging.ERROR, logger="tracer.models"):
        for _ in range(5):
            models.refresh()
    live = models.get("intents")
    assert live is not None and live.version == "v0001"
    assert len([r for r in caplog.records if "cannot serve version v0002" in r.message]) == 1


def test_a_deploy_and_a_poll_that_see_one_new_pointer_swap_once(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Both load off the event loop at the same time; a second swap to the same version
    would start its live checks over and lose what they had gathered."""
    root = _copy(fitted, tmp_path / "d")
    swaps: list[str] = []
    models = LiveModels(
        ModelStore(root), ["intents"], lambda _t, _o, new: swaps.append(new.version)
    )
    real_load = Router.load

    def slow_load(path: Path) -> Router:
        time.sleep(0.3)  # long enough for the other caller to read the same old state
        return real_load(path)

    monkeypatch.setattr("proxy.models.Router.load", slow_load)
    callers = [threading.Thread(target=models.refresh_task, args=("intents",)) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert swaps == ["v0001"]


async def test_a_swap_is_recorded_on_the_event_loop(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Versions load in worker threads; the live checks they reset are the event loop's,
    and reset there, before the load's caller goes on."""
    root = _copy(fitted, tmp_path / "e")
    state = ProxyState(intents_config("http://127.0.0.1:9/v1", tmp_path, artifacts=root))
    state.poll_seconds = 3600
    served_on: list[int] = []
    monkeypatch.setattr(state.monitor, "serve", lambda *_: served_on.append(threading.get_ident()))
    await state.start(refit=False)
    try:
        assert served_on == [threading.get_ident()]
    finally:
        await state.stop()
