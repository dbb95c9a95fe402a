"""Pass-through overhead of the proxy (issue 2): proxy vs direct, side by side in one run.

Starts the simulated teacher (``tracer sim-teacher``) and the proxy (``tracer
serve``) as subprocesses on free loopback ports, then drives both with one
async HTTP client (aiohttp; see ``Client``) and 32 concurrent workers. Direct and proxy
blocks alternate in ABBA order (direct, proxy, proxy, direct, ...) so machine noise
hits both. Reported per scenario (teacher latency x stream mode): p50/p99 of each side
and their differences; for streams, the time to the first body byte as well. Also the
CPU time the proxy process spends per request, from /proc.

    .venv/bin/python bench/passthrough.py                  # 50 ms and 0 ms teacher
    .venv/bin/python bench/passthrough.py --latency-ms 50 --requests 500

Writes nothing outside a temporary directory; every subprocess is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import local_servers
from local_servers import REPO
from process_cpu import process_cpu_seconds

DATASET = REPO.parent / "shared" / "datasets" / "banking77" / "test.csv"
MODEL = "sim-teacher"  # the pass-through model: matches no task of the generated config
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS, TARGET_TTFB_MS = 3.0, 10.0, 5.0


# -- data and config ----------------------------------------------------------------------
def load_inputs(limit: int = 500) -> list[tuple[str, str]]:
    """(text, label) pairs from Banking77's test split, or a few built-in ones without it."""
    if DATASET.exists():
        with DATASET.open(newline="", encoding="utf-8") as f:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
        return rows[:limit]
    return [
        ("where is my new card", "card_arrival"),
        ("my card stopped working", "card_not_working"),
        ("i lost my card yesterday", "lost_or_stolen_card"),
        ("what is the euro to dollar rate", "exchange_rate"),
    ]


def write_config(path: Path, teacher_url: str, db: Path) -> None:
    """One pass-through model, plus a task under another alias so the matcher does work."""
    lines = [
        "model_list:",
        f"  - model_name: {MODEL}",
        "    litellm_params:",
        f"      model: openai/{MODEL}",
        "      api_key: sk-bench-not-a-real-key",
        f"      api_base: {teacher_url}",
        "tasks:",
        "  - name: banking",
        "    match: {model: banking-intent}",
        f"    teacher: {MODEL}",
        "server: {host: 127.0.0.1, api_keys: []}",
        f'store: {{url: "sqlite+aiosqlite:///{db}"}}',
        f"artifacts: {{dir: {path.parent / 'artifacts'}}}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- load ---------------------------------------------------------------------------------
@dataclass
class Side:
    total_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cpu_s: float = 0.0  # proxy process CPU while this side's blocks ran


class Client:
    """One HTTP client for both targets: aiohttp by default, httpx on request.

    httpx 0.28's connection pool saturates the benchmark process's core at 32 concurrent
    requests (about 240 requests/s against a 0 ms teacher, p50 77 ms, where aiohttp
    does about 2,100 requests/s at p50 14 ms), so it would measure itself, not the proxy.
    """

    def __init__(self, kind: str, concurrency: int) -> None:
        self.kind = kind
        if kind == "aiohttp":
            connector = aiohttp.TCPConnector(limit=4 * concurrency, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(total=30)
            self.aio = aiohttp.ClientSession(connector=connector, timeout=timeout)
        else:
            limits = httpx.Limits(max_connections=4 * concurrency, max_keepalive_connections=None)
            self.hx = httpx.AsyncClient(limits=limits, timeout=30.0)

    async def close(self) -> None:
        if self.kind == "aiohttp":
            await self.aio.close()
        else:
            await self.hx.aclose()

    async def post_json(self, url: str, payload: object) -> None:
        """A control request (not measured); raises on a non-2xx status."""
        if self.kind == "aiohttp":
            async with self.aio.post(url, json=payload) as resp:
                resp.raise_for_status()
        else:
            (await self.hx.post(url, json=payload)).raise_for_status()

    async def timed(self, url: str, body: bytes) -> tuple[float, float | None, bool]:
        """(start, first body byte, ok), times from perf_counter; the body is read whole."""
        headers = {"content-type": "application/json"}
        first = None
        t0 = time.perf_counter()
        try:
            if self.kind == "aiohttp":
                async with self.aio.post(url, data=body, headers=headers) as resp:
                    async for chunk in resp.content.iter_any():
                        if first is None and chunk:
                            first = time.perf_counter()
                    ok = resp.status == 200
            else:
                async with self.hx.stream("POST", url, content=body, headers=headers) as r:
                    async for chunk in r.aiter_raw():
                        if first is None and chunk:
                            first = time.perf_counter()
                    ok = r.status_code == 200
        except (TimeoutError, aiohttp.ClientError, httpx.HTTPError):
            ok = False
        return t0, first, ok


async def one_request(client: Client, url: str, body: bytes, stream: bool, side: Side) -> None:
    t0, first, ok = await client.timed(url, body)
    end = time.perf_counter()
    if not ok or first is None:
        side.errors += 1
        return
    side.total_ms.append((end - t0) * 1000.0)
    if stream:
        side.first_byte_ms.append((first - t0) * 1000.0)


async def block(
    client: Client,
    url: str,
    bodies: list[bytes],
    start: int,
    n: int,
    concurrency: int,
    stream: bool,
    side: Side,
) -> None:
    """``n`` requests through ``concurrency`` workers sharing one counter."""
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = start + next_i
            next_i += 1
            await one_request(client, url, bodies[i % len(bodies)], stream, side)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass
class Scenario:
    latency_ms: float
    stream: bool
    direct: Side
    proxy: Side
    seconds: float
    complete: bool


async def run_scenario(
    client: Client,
    teacher: str,
    proxy: str,
    proxy_pid: int,
    inputs: list[tuple[str, str]],
    latency_ms: float,
    stream: bool,
    args: argparse.Namespace,
    deadline: float,
) -> Scenario:
    sim_config = f"{teacher.removesuffix('/v1')}/_sim/config"
    await client.post_json(sim_config, {"latency_s": latency_ms / 1000})
    bodies = [
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream}
        ).encode()
        for text, _ in inputs
    ]
    urls = {"direct": f"{teacher}/chat/completions", "proxy": f"{proxy}/chat/completions"}
    warm = {"direct": Side(), "proxy": Side()}
    for name in ("direct", "proxy"):
        await block(
            client, urls[name], bodies, 0, args.warmup, args.concurrency, stream, warm[name]
        )
    sides = {"direct": Side(), "proxy": Side()}
    done = 0
    order = ("direct", "proxy", "proxy", "direct")
    t0 = time.perf_counter()
    k = 0
    while done < args.requests and time.monotonic() < deadline:
        n = min(args.block, args.requests - done)
        for name in order[(k % 2) * 2 : (k % 2) * 2 + 2]:
            cpu0 = process_cpu_seconds(proxy_pid)
            await block(client, urls[name], bodies, done, n, args.concurrency, stream, sides[name])
            sides[name].cpu_s += process_cpu_seconds(proxy_pid) - cpu0
        done += n
        k += 1
    return Scenario(
        latency_ms,
        stream,
        sides["direct"],
        sides["proxy"],
        time.perf_counter() - t0,
        done >= args.requests,
    )


# -- report -------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def report(scenarios: list[Scenario]) -> None:
    head = (
        f"{'teacher':>8} {'stream':>6} {'metric':>11} {'n d/p':>11} {'direct p50':>10} "
        f"{'proxy p50':>9} {'added p50':>9} {'direct p99':>10} {'proxy p99':>9} "
        f"{'added p99':>9} {'err d/p':>7} {'proxy CPU/req':>13}"
    )
    print(head)
    print("-" * len(head))
    for sc in scenarios:
        metrics = [("total", sc.direct.total_ms, sc.proxy.total_ms)]
        if sc.stream:
            metrics.insert(0, ("first byte", sc.direct.first_byte_ms, sc.proxy.first_byte_ms))
        served = len(sc.proxy.total_ms) + sc.proxy.errors
        cpu = f"{sc.proxy.cpu_s / served * 1000:.2f} ms" if served else "-"
        for label, d, p in metrics:
            d50, p50, d99, p99 = pct(d, 50), pct(p, 50), pct(d, 99), pct(p, 99)
            print(
                f"{sc.latency_ms:>6.0f}ms {'yes' if sc.stream else 'no':>6} {label:>11} "
                f"{f'{len(d)}/{len(p)}':>11} {d50:>10.2f} {p50:>9.2f} {p50 - d50:>+9.2f} "
                f"{d99:>10.2f} {p99:>9.2f} {p99 - d99:>+9.2f} "
                f"{f'{sc.direct.errors}/{sc.proxy.errors}':>7} {cpu:>13}"
            )
        if not sc.complete:
            print(f"{'':>8} (time limit reached before all requests were sent)")
    print("(all times in ms; added = proxy minus direct, percentiles of the pooled samples)")
    print()
    for sc in scenarios:
        d, p = sc.direct, sc.proxy
        added50 = pct(p.total_ms, 50) - pct(d.total_ms, 50)
        added99 = pct(p.total_ms, 99) - pct(d.total_ms, 99)
        verdict = [
            f"added p50 {added50:+.2f} ms (target <= {TARGET_ADDED_P50_MS:g}): "
            + ("met" if added50 <= TARGET_ADDED_P50_MS else "MISSED"),
            f"added p99 {added99:+.2f} ms (target <= {TARGET_ADDED_P99_MS:g}): "
            + ("met" if added99 <= TARGET_ADDED_P99_MS else "MISSED"),
        ]
        if sc.stream:
            ttfb = pct(p.first_byte_ms, 50) - pct(d.first_byte_ms, 50)
            verdict = [
                f"first byte p50 {ttfb:+.2f} ms (target within {TARGET_TTFB_MS:g}): "
                + ("met" if ttfb <= TARGET_TTFB_MS else "MISSED")
            ]
        mode = "stream" if sc.stream else "plain"
        print(f"teacher {sc.latency_ms:g} ms, {mode}: " + "; ".join(verdict))


# -- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency-ms", type=float, nargs="+", default=[50.0, 0.0])
    p.add_argument("--requests", type=int, default=2000, help="measured requests per target")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--block", type=int, default=250, help="requests per alternating block")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests per target")
    p.add_argument("--modes", choices=("plain", "stream"), nargs="+", default=["plain", "stream"])
    p.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    return p.parse_args(argv)


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[tuple[str, str, int]]:
    traces = tmp / "traces.jsonl"
    with traces.open("w", encoding="utf-8") as f:
        for text, label in load_inputs():
            f.write(json.dumps({"input": text, "label": label}) + "\n")
    with local_servers.teacher(traces, None, tmp / "teacher.log") as teacher_url:
        config = tmp / "tracer.yaml"
        write_config(config, teacher_url, tmp / "tracer.db")
        with local_servers.proxy(config, tmp / "proxy.log", workers=None) as (proxy_url, proxy_pid):
            yield teacher_url, proxy_url, proxy_pid


async def run(args: argparse.Namespace, teacher: str, proxy: str, pid: int) -> list[Scenario]:
    deadline = time.monotonic() + args.time_limit
    inputs = load_inputs()
    scenarios = []
    client = Client(args.client, args.concurrency)
    try:
        for latency in args.latency_ms:
            for mode in args.modes:
                if time.monotonic() >= deadline:
                    break
                sc = await run_scenario(
                    client, teacher, proxy, pid, inputs, latency, mode == "stream", args, deadline
                )
                scenarios.append(sc)
    finally:
        await client.close()
    return scenarios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"pass-through benchmark: {args.concurrency} concurrent, {args.requests} measured "
        f"requests per target per scenario, blocks of {args.block} (ABBA), "
        f"warm-up {args.warmup}, {args.client} client; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    with (
        tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp,
        servers(Path(tmp)) as (
            teacher,
            proxy,
            pid,
        ),
    ):
        print(f"teacher {teacher}  proxy {proxy}\n")
        scenarios = asyncio.run(run(args, teacher, proxy, pid))
    report(scenarios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
