"""The PostgreSQL server of the store's tests, and a database of its own for each test.

Apart from the tests so that both PostgreSQL suites (the store's, the proxy's) and the
conftest's `store_url` share one server fixture and one way to create and drop databases.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

__all__ = ["PG_ENV", "pg_server", "pg_url", "run_apart"]

PG_ENV = "TRACER_TEST_PG_URL"
T = TypeVar("T")


def run_apart(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own in another thread: for sync
    fixtures and tests, without touching the event loop pytest-asyncio manages."""

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


@pytest.fixture(scope="module")
def pg_server() -> URL:
    """The server's URL (a SQLAlchemy asyncpg URL), or a skip when none is configured."""
    raw = os.environ.get(PG_ENV)
    if not raw:
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}, as .ci/postgres.sh does")
    url = make_url(raw)
    assert url.get_backend_name() == "postgresql", f"{PG_ENV} is not a PostgreSQL URL: {url!r}"
    return url


async def admin(server: URL, *statements: str) -> None:
    """Statements on the server's own database, outside a transaction (CREATE DATABASE)."""
    conn = await asyncpg.connect(server.set(drivername="postgresql").render_as_string(False))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_url(pg_server: URL) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards, whoever still holds it."""
    name = f"tracer_test_{uuid.uuid4().hex[:12]}"
    run_apart(lambda: admin(pg_server, f'CREATE DATABASE "{name}"'))
    try:
        yield pg_server.set(database=name).render_as_string(hide_password=False)
    finally:
        run_apart(lambda: admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
