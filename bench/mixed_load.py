"""Mixed concurrent load on a real `tracer serve`, then a consistency audit of its store.

Starts the simulated teacher (``tracer sim-teacher``) over a labelled set (synthetic
intents, or ``--data``), fits a surrogate on part of it (``tracer fit``) and serves it (unless
``--no-serve-model``), starts ``tracer serve`` and sends ``--requests`` requests at
``--concurrency`` from one aiohttp session, a seeded mix of task chat (plain, and streamed to
``[DONE]``), pass-through chat, ``/v1/classify``, ``/v1/embeddings`` and ``GET /v1/models``;
then stops the proxy with SIGTERM (it flushes queued records) and reads its SQLite store.

Reading the output: ``decisions`` is what the ``x-tracer-decision`` header said on task
requests (chat, classify); ``errors`` are statuses >= 500, client exceptions and streams not
ending in ``[DONE]``. The checks hold the store to what the clients saw: traces of source
teacher/explore/deferred == task requests the teacher answered (decision deferred or
teacher), audit traces <= handled requests, one ``decisions`` row per answered task request
by decision; "store dropped" (/metrics) and the store queue's peak (/healthz) explain rows
that are missing. Peak RSS is the proxy's VmHWM; its fds are counted before the load and
once idle after it. Exits 1 if a check fails.

    .venv/bin/python bench/mixed_load.py --requests 2000
    .venv/bin/python bench/mixed_load.py --data ../shared/datasets/banking77 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from local_servers import child_env, free_port, stop, teacher  # noqa: E402

from proxy.models import ModelStore  # noqa: E402
from proxy.sim.synthetic import make_intents  # noqa: E402
from training.datasets import load_labelled  # noqa: E402

TASK, ALIAS, TEACHER = "intent", "intent-classifier", "sim-teacher"
MIX = {"task": 0.50, "stream": 0.15, "passthrough": 0.15, "classify": 0.10,
       "embeddings": 0.05, "models": 0.05}  # fmt: skip
FD_SLACK = 8  # SQLAlchemy's SQLite pool: up to 5 connections of 2 fds (db, WAL); more leaks
JSON = {"content-type": "application/json"}


def start_proxy(work: Path, stack: contextlib.ExitStack) -> tuple[subprocess.Popen[str], str]:
    """`tracer serve` on a free port; the proc itself, since the run stops it to measure."""
    port = free_port()
    cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(work / "config.yaml"),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]  # fmt: skip
    with (log := work / "proxy.log").open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=f, stderr=f, text=True)
    stack.callback(stop, proc)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        time.sleep(0.1)
    raise RuntimeError(f"proxy did not start:\n{log.read_text()[-2000:]}")


def status_mb(pid: int, key: str) -> float:  # VmRSS, VmHWM (peak RSS), ... in MB
    found = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) / 1024 if found else float("nan")


def fds(pid: int) -> Counter[str]:  # by target: a path, socket:[inode], pipe:[inode], ...
    found: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found[os.readlink(f"/proc/{pid}/fd/{fd}")] += 1
    return found


def fd_text(found: Counter[str]) -> str:
    kinds = Counter(t.split(":")[0] if ":" in t else "file" for t in found.elements())
    return f"{found.total()} ({hist(kinds)})"


def load_rows(data: str | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """(every row, the rows a model is fitted on, a description of the data)."""
    if data is None:
        rows = make_intents(2400, seed=0)
        return rows, rows[: len(rows) // 2], f"synthetic intents ({len(rows)} rows)"
    train, test = load_labelled(data, "train"), load_labelled(data, "test")
    return train + test, train, f"{data} ({len(train)} train + {len(test)} test rows)"


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"input": t, "label": y}) + "\n" for t, y in rows))


def fit_model(work: Path, artifacts: Path, rows: list[tuple[str, str]], labels: list[str]) -> str:
    """`tracer fit` on `rows`, installed as the served version of the task; a summary."""
    store = ModelStore(artifacts)
    version = store.next_version(TASK)
    write_jsonl(work / "fit.jsonl", rows)
    (work / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    cmd = [sys.executable, "-m", "proxy.cli", "fit", str(work / "fit.jsonl"),
           "--out", str(store.version_dir(TASK, version)), "--labels", str(work / "labels.json"),
           "--task", TASK, "--quiet"]  # fmt: skip
    started = time.monotonic()
    with (work / "fit.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=log).returncode
    if rc != 0:
        raise RuntimeError(f"tracer fit exited {rc}:\n{(work / 'fit.log').read_text()[-2000:]}")
    store.set_current(TASK, version)
    manifest = json.loads((store.version_dir(TASK, version) / "manifest.json").read_text())
    cal = manifest.get("calibration") or {}
    return (f"{TASK} {version}, fitted on {len(rows)} rows in {time.monotonic() - started:.0f} s, "
            f"calibration coverage {cal.get('coverage', 0):.3f} "
            f"agreement {cal.get('agreement', 0):.3f}")  # fmt: skip


def write_config(path: Path, teacher_url: str, work: Path, labels: list[str]) -> None:
    config = {
        "model_list": [{"model_name": TEACHER, "litellm_params": {
            "model": f"openai/{TEACHER}", "api_key": "sk-bench-not-a-real-key",
            "api_base": teacher_url}}],
        "tasks": [{"name": TASK, "match": {"model": ALIAS}, "teacher": TEACHER,
                   "prompt": "Classify the customer's message by intent.", "labels": labels}],
        "server": {"host": "127.0.0.1", "api_keys": []},
        "store": {"url": f"sqlite+aiosqlite:///{work / 'tracer.db'}"},
        "artifacts": {"dir": str(work / "artifacts")},
        # No refits during the run: the served model stays the one installed here.
        "refit": {"min_new_traces": 1_000_000_000, "interval_seconds": 1e9},
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)  # answered task requests
    by_kind: dict[str, list[float]] = field(default_factory=dict)  # kind -> latencies (s)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    sent: int = 0
    queue_peak: int = 0  # the most records /healthz saw waiting for the store

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {what}")


Planned = tuple[str, str, bytes | None]  # kind, path, body


def plan(n: int, texts: list[str], shares: dict[str, float], seed: int) -> list[Planned]:
    rng = random.Random(seed)
    kinds = rng.choices(list(shares), weights=list(shares.values()), k=n)
    out: list[Planned] = []
    for kind in kinds:
        text = rng.choice(texts)
        user = [{"role": "user", "content": text}]
        bodies: dict[str, dict[str, object]] = {
            "task": {"model": ALIAS, "messages": user},
            "stream": {"model": ALIAS, "messages": user, "stream": True},
            "passthrough": {"model": TEACHER, "messages": user},
            "classify": {"task": TASK, "input": text},
            "embeddings": {"model": TEACHER, "input": text},
        }
        body = bodies.get(kind)
        path = {"classify": "/v1/classify", "embeddings": "/v1/embeddings",
                "models": "/v1/models"}.get(kind, "/v1/chat/completions")  # fmt: skip
        out.append((kind, path, json.dumps(body).encode() if body is not None else None))
    return out


async def one(session: aiohttp.ClientSession, base: str, req: Planned, tally: Tally) -> None:
    kind, path, body = req
    started, text = time.perf_counter(), ""
    try:
        url = base + path
        ctx = session.get(url) if body is None else session.post(url, data=body, headers=JSON)
        async with ctx as resp:
            tally.statuses[resp.status] += 1
            if kind == "stream" and resp.status == 200:
                last = None  # read every SSE event; the last one must be [DONE]
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        last = line[5:].strip().decode()
                if last != "[DONE]":
                    tally.error(kind, f"stream ended with {str(last)[:200]!r}, not [DONE]")
                    return
            else:
                text = await resp.text()
            if resp.status >= 500:
                tally.error(kind, f"status {resp.status}: {text[:200]}")
                return
            if resp.status == 200 and kind in ("task", "stream", "classify"):
                tally.decisions[resp.headers.get("x-tracer-decision", "missing")] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.error(kind, f"{type(exc).__name__}: {exc}")
        return
    tally.by_kind.setdefault(kind, []).append(time.perf_counter() - started)


async def drive(base: str, requests: list[Planned], concurrency: int, tally: Tally) -> float:
    connector, timeout = aiohttp.TCPConnector(limit=concurrency), aiohttp.ClientTimeout(120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while tally.sent < len(requests):
                tally.sent += 1
                await one(session, base, requests[tally.sent - 1], tally)

        async def watch() -> None:  # on a connection of its own, outside the pool of C
            async with aiohttp.ClientSession(timeout=timeout) as probe:
                while tally.sent < len(requests):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError):
                        async with probe.get(f"{base}/healthz") as resp:
                            queued = (await resp.json())["store_queue"]
                            tally.queue_peak = max(tally.queue_peak, queued)
                    await asyncio.sleep(0.2)

        started = time.perf_counter()
        await asyncio.gather(watch(), *(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def hist(counts: Counter[str] | Counter[int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=str)) or "none"


def metric_sum(text: str, name: str) -> str:
    found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, flags=re.M)
    return ", ".join(f"{labels or ''} {float(v):g}" for labels, v in found) or "none"


def run(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> int:
    shares = {kind: getattr(args, f"mix_{kind}") for kind in MIX}
    rows, fit_rows, described = load_rows(args.data)
    labels = sorted({label for _, label in rows})
    print(f"mixed load: {args.requests} requests at {args.concurrency} concurrent, seed "
          f"{args.seed}, teacher latency {args.teacher_latency_ms:g} ms; data {described}; "
          f"mix {hist(Counter(shares))}; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    none = "none (--no-serve-model): every task request goes to the teacher"
    served = none if args.no_serve_model else fit_model(work, work / "artifacts", fit_rows, labels)
    print(f"served model: {served}", flush=True)
    write_jsonl(work / "answers.jsonl", rows)
    teacher_url = stack.enter_context(
        teacher(work / "answers.jsonl", args.teacher_latency_ms, work / "teacher.log")
    )
    write_config(work / "config.yaml", teacher_url, work, labels)
    proxy, base = start_proxy(work, stack)
    requests = plan(args.requests, [t for t, _ in rows], shares, args.seed)
    fd_before, rss_before = fds(proxy.pid), status_mb(proxy.pid, "VmRSS")
    tally = Tally()
    seconds = asyncio.run(drive(base, requests, args.concurrency, tally))
    fd_right_after = fd_after = fds(proxy.pid)
    deadline = time.monotonic() + 15  # for idle upstream connections to close (keep-alive 4 s)
    while fd_after.total() > fd_before.total() and time.monotonic() < deadline:
        time.sleep(0.5)
        fd_after = fds(proxy.pid)
    peak, rss_after = status_mb(proxy.pid, "VmHWM"), status_mb(proxy.pid, "VmRSS")
    page = httpx.get(f"{base}/metrics", timeout=10).text
    sim = httpx.get(f"{teacher_url.removesuffix('/v1')}/_sim/stats", timeout=10).json()
    proxy.send_signal(signal.SIGTERM)  # the proxy flushes its queued records as it stops
    with contextlib.suppress(subprocess.TimeoutExpired):
        proxy.wait(90)
    rc = proxy.poll()  # None: still running after 90 s (main() then kills it)
    with contextlib.closing(sqlite3.connect(work / "tracer.db")) as conn:
        traces = Counter(dict(conn.execute("select source, count(*) from traces group by 1")))
        decided = Counter(dict(conn.execute("select decision, count(*) from decisions group by 1")))
    log = (work / "proxy.log").read_text(errors="replace").splitlines()
    noted = [line for line in log if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)]

    errors = tally.errors.total()
    answered = tally.decisions["deferred"] + tally.decisions["teacher"]
    sampled = traces["teacher"] + traces["explore"] + traces["deferred"]
    handled, task_ok = tally.decisions["handled"], tally.decisions.total()
    print(f"\nsent {tally.sent} requests in {seconds:.1f} s: {tally.sent / seconds:.0f} requests/s")
    print("by kind, answered without error: count, p50 / p99 ms")
    for kind in MIX:
        lat = tally.by_kind.get(kind, [])
        print(f"  {kind:<12} {len(lat):>6}  {1000 * pct(lat, 0.5):8.1f} / "
              f"{1000 * pct(lat, 0.99):8.1f}")  # fmt: skip
    print(f"statuses: {hist(tally.statuses)}")
    print(f"decisions (x-tracer-decision, task chat + classify): {hist(tally.decisions)}")
    print(f"errors: {errors} ({hist(tally.errors)})")
    for example in tally.examples:
        print(f"  e.g. {example}")
    print(f"traces by source: {hist(traces)}")
    print(f"decisions table: {hist(decided)}")
    print(f"teacher saw: {hist(Counter(sim['by_path']))}")
    print(f"proxy metrics: audits {metric_sum(page, 'tracer_audits_total')}; store dropped "
          f"{metric_sum(page, 'tracer_store_dropped_total')}; store queue peak {tally.queue_peak} "
          f"(of store.queue_size, default 10,000)")  # fmt: skip
    print(f"proxy RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after, "
          f"peak {peak:.0f} MB (VmHWM)")  # fmt: skip
    print(f"proxy fds: {fd_text(fd_before)} before; {fd_text(fd_right_after)} right after; "
          f"{fd_text(fd_after)} once idle; new: {hist(fd_after - fd_before)}")  # fmt: skip
    print(f"proxy log: {len(log)} lines, {len(noted)} warnings/errors, exit status {rc}")
    for line in noted[:5]:
        print(f"  {line[:300]}")
    n4xx = sum(v for k, v in tally.statuses.items() if 400 <= k < 500)
    other = sum(traces.values()) - sampled - traces["audit"]
    checks = [
        (f"no errors ({errors})", errors == 0),
        (f"no 4xx statuses ({n4xx})", n4xx == 0),
        (f"traces teacher+explore+deferred == teacher-answered task requests: "
         f"{sampled} == {answered}", sampled == answered),
        (f"audit traces <= handled requests: {traces['audit']} <= {handled}",
         traces["audit"] <= handled),
        (f"no traces of other sources ({other})", other == 0),
        (f"decisions rows == answered task requests: {decided.total()} == {task_ok}",
         decided.total() == task_ok),
        ("decisions rows by decision == x-tracer-decision headers", decided == tally.decisions),
        (f"proxy exited after SIGTERM (status {rc})", rc in (0, -signal.SIGTERM)),
        (f"no fd growth: {fd_after.total()} <= {fd_before.total()} + {FD_SLACK} (SQLite pool)",
         fd_after.total() <= fd_before.total() + FD_SLACK),
    ]  # fmt: skip
    print("checks:\n" + "\n".join(f"  {'PASS' if ok else 'FAIL'}  {text}" for text, ok in checks))
    failed = sum(not ok for _, ok in checks)
    print(f"{failed} check(s) FAILED" if failed else "all checks passed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="a labelled set for load_labelled (default: synthetic intents)")
    p.add_argument("--teacher-latency-ms", type=float, default=20.0)
    p.add_argument("--no-serve-model", action="store_true", help="teacher answers all")
    p.add_argument("--keep", action="store_true", help="keep (and print) the temporary folder")
    for kind, share in MIX.items():
        p.add_argument(f"--mix-{kind}", type=float, default=share, help=f"share (default {share})")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tracer-mixed-"))
    status = 1  # also when run() raises: the folder is then kept for its logs
    try:
        with contextlib.ExitStack() as stack:  # the servers stop, whatever happens
            status = run(args, work, stack)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        if args.keep or status != 0:
            print(f"temporary folder kept: {work} (proxy.log, teacher.log, tracer.db, ...)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
