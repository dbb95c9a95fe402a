"""The README's quickstart, run as written: a new user's first ten minutes, in CI.

The fenced blocks marked ``<!-- quickstart: try-it -->`` run in order in a temporary
folder (with `.venv` linked to the project's), bash blocks with bash and Python blocks
with the project's Python. The only change, the README says so too: the ports 8000 and
8001 become free ones. The request must land on the task: a task header, a trace in the
store, the metric. And "Run the proxy"'s snippet must reach the task of
config.example.yaml, which is what a user copies.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.support import free_ports

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARK = "<!-- quickstart: try-it -->"


def marked_blocks(text: str, mark: str = MARK) -> list[tuple[str, str]]:
    """(language, code) of each fenced block right after ``mark``."""
    pattern = re.escape(mark) + r"\s*\n```(\w+)\n(.*?)\n```"
    return re.findall(pattern, text, re.S)


def python_blocks_after(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```", section, re.S)


@contextlib.contextmanager
def process_groups() -> Iterator[list[int]]:
    """Process groups started by the test (a bash block's background jobs live on in its
    group); each is ended, by its id, at the end."""
    groups: list[int] = []
    try:
        yield groups
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        time.sleep(0.5)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def wait_for_trace(db: Path, task: str, timeout: float = 20.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = []
        if db.is_file():
            query = "select input, label from traces where task = ?"
            with (
                contextlib.closing(sqlite3.connect(db)) as conn,
                contextlib.suppress(sqlite3.OperationalError),
            ):
                rows = conn.execute(query, (task,)).fetchall()
        if rows:
            return rows
        time.sleep(0.2)
    return []


def run_quickstart(
    tmp_path: Path, mark: str, before: dict[int, Callable[[], None]] | None = None,
    timeout: float = 120,
) -> list[str]:  # fmt: skip
    """Run the blocks after ``mark`` in order, in ``tmp_path`` with free ports, each to
    its end (a block's background servers live on until the test ends); their output.
    ``before[i]`` runs before block i (a wait for what the last block set off)."""
    blocks = marked_blocks(README.read_text(encoding="utf-8"), mark)
    assert blocks, mark
    ports = dict(zip(("8000", "8001"), map(str, free_ports(2)), strict=True))
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)  # no key: that is the point
    outputs = []
    with process_groups() as groups:
        for i, (lang, code) in enumerate(blocks):
            for old, new in ports.items():
                code = code.replace(old, new)
            command = ["bash", "-euo", "pipefail", "-c", code]
            if lang == "python":
                command = [sys.executable, "-c", code]
            if before and i in before:
                before[i]()
            log = tmp_path / f"block{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                groups.append(proc.pid)
                assert proc.wait(timeout=timeout) == 0, log.read_text()
            outputs.append(log.read_text())
    return outputs


def test_the_try_it_blocks_run_as_written_and_reach_the_task(tmp_path):
    assert [lang for lang, _ in marked_blocks(README.read_text(encoding="utf-8"))] == [
        "bash", "python", "bash"
    ]  # fmt: skip
    wait = {2: lambda: assert_(wait_for_trace(tmp_path / "try.db", "banking-intent"))}
    _, served, metrics = run_quickstart(tmp_path, MARK, wait)
    assert served.splitlines()[:2] == ["teacher - no model deployed", "card_arrival"], served
    assert 'tracer_requests_total{decision="teacher",task="banking-intent"} 1.0' in metrics
    assert '"input": "My card has not arrived yet", "label": "card_arrival"' in metrics
    assert wait_for_trace(tmp_path / "try.db", "banking-intent") == [
        ("My card has not arrived yet", "card_arrival")
    ]


def assert_(value: object) -> None:
    assert value


def test_the_nothing_yet_quickstart_climbs(tmp_path):
    """Serve, send traffic, watch the share answered locally climb."""
    _, rounds, status = run_quickstart(tmp_path, "<!-- quickstart: nothing-yet -->", timeout=300)
    shares = [int(m) for m in re.findall(r": (\d+)% answered locally", rounds)]
    assert len(shares) == 6 and shares[0] == 0, rounds
    assert min(shares[-3:]) > shares[0], rounds  # it climbed, and held
    assert "intents" in status and "v0" in status, status


def test_the_i_have_logs_quickstart_imports_scans_and_shadows(tmp_path):
    """Import the logs, scan them, serve in shadow: the teacher answers every request,
    and the proxy says what serving would have done. Then switch to serve with a reload."""
    blocks = run_quickstart(tmp_path, "<!-- quickstart: logs -->", timeout=300)
    setup, tally, status, _, served = blocks
    assert re.search(r"stored\s+2000", setup), setup
    assert "deploy" in setup, setup  # the scan's verdict
    would = ast.literal_eval(tally.strip().splitlines()[-1])  # {(decision, shadow): count}
    assert sum(would.values()) == 1000 and {d for d, _ in would} == {"teacher"}, would
    assert would.get(("teacher", "handled"), 0) > 0, would
    assert "shadow" in status, status
    # Then mode: serve and a SIGHUP: the same proxy answers locally.
    after = ast.literal_eval(served.strip().splitlines()[-1])
    assert after.get("handled", 0) > sum(after.values()) / 2, after


def test_the_run_the_proxy_snippet_reaches_the_example_task(tmp_path):
    """config.example.yaml as a user copies it, its upstream pointed at a simulated
    teacher; the README's client snippet must land on the task, not pass through."""
    from proxy.config import parse_config
    from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
    from tests.support import running_proxy

    raw = yaml.safe_load((REPO / "config.example.yaml").read_text(encoding="utf-8"))
    snippet = next(
        code
        for code in python_blocks_after(README.read_text(encoding="utf-8"), "## Run the proxy")
        if "OpenAI(" in code
    )
    labels = raw["tasks"][0]["labels"]
    teacher = SimulatedTeacher({"My card has not arrived yet": "card_arrival"}, labels=labels)
    with run_sim_teacher(teacher) as teacher_url:
        raw["model_list"][0]["litellm_params"]["api_base"] = teacher_url
        raw["store"]["url"] = f"sqlite+aiosqlite:///{tmp_path / 'tracer.db'}"
        raw["artifacts"]["dir"] = str(tmp_path / "models")
        config = parse_config(raw, env={"OPENAI_API_KEY": "sk-test"})
        with running_proxy(config) as base:
            code = snippet.replace("http://127.0.0.1:8000/v1", base)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=60, cwd=tmp_path)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "card_arrival"
            task = raw["tasks"][0]["name"]
            assert wait_for_trace(tmp_path / "tracer.db", task) == [
                ("My card has not arrived yet", "card_arrival")
            ]
