"""Chat-completion load for the handled bench: three clients, driven at a concurrency.

A `Run` records what one client saw (latencies, `x-tracer-decision`s, errors) and the CPU
it and the server spent; `measure` drives one client in this process, and
`measure_in_processes` one client from several, since one Python process caps its rate.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
from process_cpu import cpu_seconds


@dataclass
class Run:
    name: str
    client: str
    concurrency: int
    latencies: list[float]
    decisions: dict[str, int]
    wall_s: float
    proxy_cpu_s: float
    client_cpu_s: float
    errors: int
    placement: str = "spread"

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]

    @property
    def n(self) -> int:
        return len(self.latencies)

    @property
    def label(self) -> str:
        return self.name if self.placement == "spread" else f"{self.name}, {self.placement}"

    def row(self) -> str:
        return (
            f"| {self.label} | {self.client} | {self.concurrency} | {self.n} | "
            f"{1000 * self.pct(0.5):.2f} | "
            f"{1000 * self.pct(0.99):.2f} | {self.n / self.wall_s:.0f} | "
            f"{1000 * self.proxy_cpu_s / self.n:.2f} | {1000 * self.client_cpu_s / self.n:.2f} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(self.decisions.items()))} | {self.errors} |"
        )


class OpenAIClient:
    name = "openai AsyncOpenAI"

    def __init__(self, url: str) -> None:
        self.client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)

    async def call(self, model: str, text: str) -> str:
        raw = await self.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
        raw.parse()
        return raw.headers.get("x-tracer-decision", "?")

    async def close(self) -> None:
        await self.client.close()


class OpenAIAiohttpClient(OpenAIClient):
    """The same client on its documented aiohttp transport: half the client CPU of httpx."""

    name = "openai AsyncOpenAI + DefaultAioHttpClient"

    def __init__(self, url: str) -> None:
        self.client = openai.AsyncOpenAI(
            base_url=url,
            api_key="x",
            max_retries=0,
            timeout=60,
            http_client=openai.DefaultAioHttpClient(),
        )


class AiohttpClient:
    name = "aiohttp (lean)"

    def __init__(self, url: str) -> None:
        self.url = f"{url}/chat/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def call(self, model: str, text: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        async with self.session.post(self.url, json=body) as response:
            await response.read()
            response.raise_for_status()
            return response.headers.get("x-tracer-decision", "?")

    async def close(self) -> None:
        await self.session.close()


CLIENTS: dict[str, type[OpenAIClient] | type[AiohttpClient]] = {
    "openai": OpenAIClient,
    "openai-aiohttp": OpenAIAiohttpClient,
    "aiohttp": AiohttpClient,
}


async def drive(
    client: OpenAIClient | AiohttpClient,
    model: str,
    texts: Sequence[str],
    n: int,
    concurrency: int,
) -> tuple[list[float], dict[str, int], int, float]:
    latencies: list[float] = []
    decisions: dict[str, int] = {}
    errors = 0
    sent = 0

    async def worker() -> None:
        nonlocal sent, errors
        while sent < n:
            text = texts[sent % len(texts)]
            sent += 1
            started = time.perf_counter()
            try:
                decision = await client.call(model, text)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            decisions[decision] = decisions.get(decision, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, decisions, errors, time.perf_counter() - started


async def measure(
    name: str, kind: str, url: str, pid: int, model: str, texts: Sequence[str], n: int,
    warmup: int, concurrency: int,
) -> Run:  # fmt: skip
    client = CLIENTS[kind](url)
    try:
        await drive(client, model, texts, warmup, concurrency)
        proxy_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        latencies, decisions, errors, wall = await drive(client, model, texts, n, concurrency)
        proxy_cpu, client_cpu = cpu_seconds(pid) - proxy_cpu, time.process_time() - client_cpu
    finally:
        await client.close()
    return Run(
        name, client.name, concurrency, latencies, decisions, wall, proxy_cpu, client_cpu, errors
    )


def _client_process(
    kind: str, url: str, model: str, texts: Sequence[str], n: int, warmup: int,
    concurrency: int, barrier: Any, results: Any,
) -> None:  # fmt: skip
    """One client process: warm up, wait for the others, then measure its share."""

    async def go() -> tuple[list[float], dict[str, int], int, float, float]:
        client = CLIENTS[kind](url)
        try:
            await drive(client, model, texts, warmup, concurrency)
            await asyncio.to_thread(barrier.wait)
            cpu = time.process_time()
            latencies, decisions, errors, wall = await drive(client, model, texts, n, concurrency)
            return latencies, decisions, errors, wall, time.process_time() - cpu
        finally:
            await client.close()

    results.put(asyncio.run(go()))


def measure_in_processes(
    name: str, kind: str, url: str, pid: int, model: str, texts: Sequence[str], n: int,
    warmup: int, concurrency: int, processes: int,
) -> Run:  # fmt: skip
    """The same client in several processes, sharing the concurrency and the requests."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    share = [texts[i::processes] for i in range(processes)]
    each = (n // processes, warmup // processes, concurrency // processes, barrier, results)
    procs = [
        ctx.Process(target=_client_process, args=(kind, url, model, share[i], *each))
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    proxy_cpu, started = cpu_seconds(pid), time.perf_counter()
    parts = [results.get(timeout=600) for _ in procs]
    wall, proxy_cpu = time.perf_counter() - started, cpu_seconds(pid) - proxy_cpu
    for proc in procs:
        proc.join()
    decisions: dict[str, int] = {}
    for part in parts:
        for key, count in part[1].items():
            decisions[key] = decisions.get(key, 0) + count
    return Run(
        name,
        f"{CLIENTS[kind].name} in {processes} processes",
        concurrency,
        [x for part in parts for x in part[0]],
        decisions,
        wall,
        proxy_cpu,
        sum(part[4] for part in parts),
        sum(part[2] for part in parts),
    )
