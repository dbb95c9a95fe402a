"""What a SIGHUP applies in place: each task's mode and sampling; the rest waits."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from proxy.config import load_config
from proxy.reload import reload_modes


def write(path: Path, **task: object) -> Path:
    raw = {
        "model_list": [{"model_name": "big", "litellm_params": {"model": "openai/big"}}],
        "tasks": [{"name": "t", "match": {"model": "t"}, "teacher": "big", **task}],
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_mode_and_sampling_change_in_place_and_the_rest_is_logged(tmp_path, caplog):
    path = write(tmp_path / "tracer.yaml", mode="shadow", audit_rate=0.02, target=0.95)
    running = load_config(path)
    task = running.tasks[0]
    write(path, mode="serve", audit_rate=0.05, probation_boost=10, target=0.9)
    with caplog.at_level(logging.INFO, logger="tracer.config"):
        done = reload_modes(path, running)
    assert (task.mode, task.audit_rate, task.probation_boost) == ("serve", 0.05, 10)
    assert task.target == 0.95  # what was certified stays until a restart
    assert len(done) == 3 and "audit_rate 0.02 -> 0.05" in " ".join(done)
    assert "target changed; a restart applies it" in caplog.text
    assert reload_modes(path, running) == []  # nothing new the second time


def test_a_broken_file_leaves_the_running_config_as_it_is(tmp_path):
    path = write(tmp_path / "tracer.yaml", mode="shadow")
    running = load_config(path)
    path.write_text("tasks: [", encoding="utf-8")
    assert reload_modes(path, running) == [] and running.tasks[0].mode == "shadow"
