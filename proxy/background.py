"""Work that follows a request without delaying it (audits, lane checks), bounded.

A slow upstream must not let background calls pile up without end, so at most `limit`
run at once and the rest are refused (the caller counts them as skipped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class BackgroundJobs:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, make: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start `make()` unless `limit` jobs already run; False when refused."""
        if len(self._tasks) >= self.limit:
            return False
        job = asyncio.create_task(make())
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        return True

    async def stop(self) -> None:
        """Cancel what still runs (at shutdown) and wait for it to end."""
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
