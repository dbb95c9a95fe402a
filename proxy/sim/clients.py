"""The flywheel's clients: a day's rows sent through the proxy with the official openai client.

Each request is timed and its answer compared with the row's label, exactly (the
promise is the teacher's answer, byte for byte); failures are kept with their cause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .flywheel import Settings

Row = tuple[str, str]
TASK = "intents"  # the task's name and the model alias the flywheel's clients ask for


@dataclass
class Outcome:
    decision: str  # handled | deferred | teacher | error
    seconds: float
    agrees: bool
    version: str | None = None
    error: str | None = None
    lane: str | None = None  # who answered: surrogate, a lane's model_name, teacher
    reason: str = ""  # the proxy's x-tracer-reason

    @property
    def by_teacher(self) -> bool:
        return self.decision in ("teacher", "deferred") and self.lane in (None, "teacher")


def describe(exc: BaseException) -> str:
    """The error and what caused it: the openai client's "Connection error." alone says
    nothing about whether the proxy, the network or a closed socket failed."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


async def send_all(url: str, rows: Sequence[Row], s: Settings) -> list[Outcome]:
    """Each row through the proxy with the official openai client, ``concurrency`` at a time."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="demo", max_retries=0, timeout=s.timeout_s)
    outcomes: list[Outcome | None] = [None] * len(rows)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(rows):
            i = next_index
            next_index += 1
            text, label = rows[i]
            started = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=TASK, messages=[{"role": "user", "content": text}]
                )
                reply = raw.parse()
                seconds = time.perf_counter() - started
                content = reply.choices[0].message.content
                outcomes[i] = Outcome(
                    raw.headers.get("x-tracer-decision", "?"),
                    seconds,
                    content == label,  # exact: the promise is the teacher's answer, byte for byte
                    raw.headers.get("x-tracer-model-version"),
                    lane=raw.headers.get("x-tracer-lane"),
                    reason=raw.headers.get("x-tracer-reason", ""),
                )
            except Exception as exc:  # counted and reported, never silently dropped
                seconds = time.perf_counter() - started
                outcomes[i] = Outcome("error", seconds, False, error=describe(exc))

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, s.concurrency))))
    finally:
        await client.close()
    return [o for o in outcomes if o is not None]
