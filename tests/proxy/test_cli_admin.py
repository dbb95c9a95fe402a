"""The admin verbs as a new user runs them: without the upstream's key, from another
folder, before anything was served, piped into `head`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main

CONFIG = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/TRACER_TEST_UNSET_KEY}
tasks:
  - name: banking-intent
    match: {model: banking-intent}
    teacher: gpt-4o-mini
store: {url: "sqlite+aiosqlite:///tracer.db"}
artifacts: {dir: .tracer}
"""


@pytest.fixture
def run2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run2/config.yaml, with the verbs run from tmp_path (another folder)."""
    folder = tmp_path / "run2"
    folder.mkdir()
    (folder / "config.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACER_TEST_UNSET_KEY", raising=False)
    return folder


def tracer(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACER_TEST_UNSET_KEY"}
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=60)  # fmt: skip


def test_export_before_anything_was_served_says_so_in_one_line_and_creates_nothing(run2, capsys):
    before = sorted(p.name for p in run2.parent.rglob("*"))
    assert main(["traces", "export", "banking-intent", "--config", "run2/config.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"tracer: no store at {run2 / 'tracer.db'} yet (nothing has been served with this config)"
    )
    assert sorted(p.name for p in run2.parent.rglob("*")) == before


def test_export_of_a_store_without_traces_is_one_line(run2, capsys):
    (run2 / "tracer.db").write_bytes(b"")  # an empty SQLite file: no tables
    assert main(["traces", "export", "banking-intent", "--config", "run2/config.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no traces yet" in err[0], err


def test_models_list_needs_no_key_reads_beside_the_config_and_has_a_header(run2, capsys):
    (run2 / ".tracer" / "banking-intent" / "versions" / "v0001").mkdir(parents=True)
    assert main(["models", "list", "--config", "run2/config.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "version", "status", "refit", "created", "figures"]
    assert lines[1].split()[:4] == ["banking-intent", "v0001", "incomplete", "-"]
    assert main(["models", "list", "--config", "run2/config.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == "v0001"


def test_serve_names_the_unset_variable_and_does_not_start(run2):
    done = tracer("serve", "--config", "run2/config.yaml")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "tracer: model_list[0].litellm_params.api_key: environment variable "
        "TRACER_TEST_UNSET_KEY is not set"
    )
    assert not (run2 / "tracer.db").exists()


def test_version():
    done = tracer("--version")
    assert done.returncode == 0 and done.stdout.startswith("tracer "), done


def test_json_into_a_closed_pipe_ends_quietly(run2):
    for n in range(1, 400):  # enough output to fill a pipe's buffer
        (run2 / ".tracer" / "banking-intent" / "versions" / f"v{n:04d}").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "TRACER_TEST_UNSET_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "models", "list", "--config", "run2/config.yaml",
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)  # `head -c 10`: read a little, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
