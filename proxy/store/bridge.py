"""The store for code that blocks: an event loop of its own, on a thread of its own.

The model store's methods are called from worker threads (the poll's `asyncio.to_thread`),
from the CLI, and briefly from the event loop (a fit reserving its version number). They
cannot await the app's engine, whose connections belong to the app's loop; so they run
their coroutines here, on a private loop with a small engine of its own, and wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .queries import create_engine, create_schema

T = TypeVar("T")
TIMEOUT_S = 120.0
CLOSE_WAIT_S = 30.0  # calls still running when the store closes are waited for this long


class BlockingStore:
    """Run `fn(engine)` to completion from any thread but this one's; started when first used."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._engine: AsyncEngine | None = None
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._closed = False

    def run(self, fn: Callable[[AsyncEngine], Awaitable[T]], timeout_s: float = TIMEOUT_S) -> T:
        """`fn(engine)`'s result; ConnectionAbortedError once the store is closed."""
        loop, engine = self._start()
        if threading.current_thread() is self._thread:
            raise RuntimeError("BlockingStore.run called from its own loop")

        async def call() -> T:
            return await fn(engine)

        with self._lock:  # a call is either refused or waited for by `close`
            if self._closed:
                raise ConnectionAbortedError("the model store is closed")
            future = asyncio.run_coroutine_threadsafe(call(), loop)
            self._running.add(future)
        try:
            return future.result(timeout_s)
        finally:
            with self._lock:
                self._running.discard(future)

    def _start(self) -> tuple[asyncio.AbstractEventLoop, AsyncEngine]:
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the model store is closed")
            if self._loop is None or self._engine is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="tracer-model-store", daemon=True
                )
                thread.start()
                engine = create_engine(self.url)
                try:
                    asyncio.run_coroutine_threadsafe(create_schema(engine), loop).result(TIMEOUT_S)
                except BaseException:
                    self._stop(loop, thread, engine)
                    raise
                self._loop, self._thread, self._engine = loop, thread, engine
            return self._loop, self._engine

    def close(self) -> None:
        """Wait for the calls under way (a poll's, perhaps: its task was cancelled but its
        thread runs on), then close every connection: SQLite checkpoints its log only when
        the last one closes. Later calls are refused."""
        with self._lock:
            self._closed = True
            running = list(self._running)
            loop, thread, engine = self._loop, self._thread, self._engine
            self._loop = self._thread = self._engine = None
        concurrent.futures.wait(running, timeout=CLOSE_WAIT_S)
        if loop is not None and thread is not None and engine is not None:
            self._stop(loop, thread, engine)

    @staticmethod
    def _stop(
        loop: asyncio.AbstractEventLoop, thread: threading.Thread, engine: AsyncEngine
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(engine.dispose(), loop).result(TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT_S)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
