"""Fixtures of the proxy suites: one fitted model for the session, and the PostgreSQL server.

`pg_server` and `pg_url` are those of `postgres_server` (a fresh database per test on
the server `TRACER_TEST_PG_URL` names; a skip, with the reason, where none is set).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.sim.synthetic import make_intents
from tests.proxy.postgres_server import pg_server, pg_url
from tests.support import serve_fitted_intents

__all__ = ["fitted_intents", "pg_server", "pg_url", "store_url"]


@pytest.fixture(scope="session")
def fitted_intents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts folder in the layout a proxy writes, with task `intents` at v0001
    (served: current.json). Read-only: copy it before changing anything."""
    root = tmp_path_factory.mktemp("fitted-intents")
    serve_fitted_intents(root, make_intents(600, seed=2))
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One store for a test, SQLite (a file) or PostgreSQL (skipped without a server)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
