"""Fixtures shared by the suites: a simulated teacher and a real proxy on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import ANSWERS, LABELS, proxy_config, running_proxy


@pytest.fixture(scope="session")
def teacher() -> Iterator[tuple[SimulatedTeacher, str]]:
    """A shared, well-behaved teacher; tests that change its behaviour make their own."""
    sim = SimulatedTeacher(ANSWERS, labels=LABELS)
    with run_sim_teacher(sim) as url:
        yield sim, url


@pytest.fixture(scope="session")
def proxy(
    teacher: tuple[SimulatedTeacher, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A proxy without client keys in front of the shared teacher: (base URL, db path)."""
    db = tmp_path_factory.mktemp("store") / "tracer.db"
    with running_proxy(proxy_config(teacher[1], db)) as url:
        yield url, db
