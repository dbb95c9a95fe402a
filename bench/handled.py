"""Handled-path latency and throughput (issue 4), with the deferred path beside it.

Fits a surrogate on Banking77's train split (or reuses one with ``--artifacts``), points
``current.json`` at it, and starts ``tracer serve`` (``--workers``, one by default) in a subprocess,
with the simulated teacher (``tracer sim-teacher``) in another as the task's
teacher. Then, through HTTP with 32 concurrent requests:

- handled: Banking77 test inputs that the model answers itself (which ones is found by
  sending every test input once first; the handled share is reported), cycled;
- deferred: the same inputs under a second task that has no model, so that every request
  goes to the teacher, which answers after ``--teacher-latency-ms`` (800 by default).

Clients: the official openai client (``AsyncOpenAI``) on its default httpx transport and
on its documented aiohttp transport (``DefaultAioHttpClient``), and, clearly labelled, a
lean aiohttp client, because the client's own CPU per request matters on a 2-core box where
client and proxy share the cores. At full concurrency the openai clients are also run from
``--processes`` processes (32 concurrent requests in all), since one Python process caps
the client's rate. Reported per run: p50/p99 latency, requests per second, the proxy's CPU
per request (from /proc) and the clients' CPU per request. One at a time, each client is
also run against a bare uvicorn app that returns a recorded handled reply: the floor of
client and HTTP, so that what the proxy adds to a request's latency can be read off; the
one-at-a-time runs go in ``--rounds`` interleaved rounds (proxy, then floor, for each
client), since this machine's noise moves a single run's p50 by a millisecond or more.
Each round runs twice, under ``--placements``: ``spread`` leaves the processes where the
scheduler puts them; ``one-core`` pins every thread of the client, the proxy and the floor
server to the first allowed CPU for that round. One at a time, every request and its
reply cross between two processes; spread, each crossing may be a wake-up across vCPUs,
whose cost on a VM varies, and one-core takes those out of the figure.

    .venv/bin/python bench/handled.py
    .venv/bin/python bench/handled.py --artifacts /tmp/b77-artifacts --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
from chat_load import AiohttpClient, measure, measure_in_processes  # noqa: E402
from local_servers import child_env, free_port, http_server, proxy, teacher  # noqa: E402
from process_cpu import placed  # noqa: E402

# What bench/profile_handled.py and bench/wakeup.py take from here.
__all__ = [
    "DATASET",
    "HANDLED_TASK",
    "REPO",
    "child_env",
    "ensure_model",
    "free_port",
    "handled_inputs",
    "measure",
    "proxy",
    "teacher",
    "write_config",
]

DATASET = REPO.parent / "shared" / "datasets" / "banking77"
HANDLED_TASK, DEFERRED_TASK = "banking77", "banking77-nomodel"
# Issue 21: the proxy adds <= 0.5 ms at p50 over the floor, one request at a time, and one
# worker serves >= 2,000 handled requests/s at 32 concurrent, both with the lean client.
TARGET_ADDED_MS, TARGET_RPS = 0.5, 2000.0


# -- the floor and the config ------------------------------------------------------------------
def canned(reply: Path, log: Path) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """A bare uvicorn app that returns one recorded proxy reply: the client's and HTTP's floor."""
    port = free_port()
    cmd = [sys.executable, __file__, "--canned-reply", str(reply), "--canned-port", str(port)]
    return http_server(cmd, port, "/", "canned server", log)


def serve_canned(reply: Path, port: int) -> None:
    import uvicorn

    recorded = json.loads(reply.read_text(encoding="utf-8"))
    body = recorded["body"].encode()
    headers = [(k.encode(), v.encode()) for k, v in recorded["headers"].items()]
    headers.append((b"content-length", str(len(body)).encode()))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def record_reply(url: str, text: str, path: Path) -> None:
    """One handled reply of the proxy, body and headers, for the canned server to repeat."""
    body = {"model": HANDLED_TASK, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
    response.raise_for_status()
    keep = {k: v for k, v in response.headers.items() if k == "content-type" or k.startswith("x-")}
    path.write_text(json.dumps({"body": response.text, "headers": keep}), encoding="utf-8")


def write_config(path: Path, teacher_url: str, work: Path, artifacts: Path, labels: list[str]):
    # audit_boost 0: the store starts empty (the model is fitted here, not from traces the
    # proxy gathered), and a young task's boosted sampling would audit every handled
    # request; the bench measures a mature task, audited at the default 2%.
    task = {"teacher": "teacher", "labels": labels, "target": 0.95, "audit_boost": 0}
    config = {
        "model_list": [
            {
                "model_name": "teacher",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_key": "sk-bench-not-a-real-key",
                    "api_base": teacher_url,
                },
            }
        ],
        "tasks": [
            {"name": HANDLED_TASK, "match": {"model": HANDLED_TASK}, **task},
            {"name": DEFERRED_TASK, "match": {"model": DEFERRED_TASK}, **task},
        ],
        "server": {"host": "127.0.0.1"},
        "store": {"url": f"sqlite+aiosqlite:///{work / 'tracer.db'}"},
        "artifacts": {"dir": str(artifacts)},
        "refit": {"min_new_traces": 1_000_000_000, "interval_seconds": 1e9},  # no fits
    }
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML


# -- the model ---------------------------------------------------------------------------------
def ensure_model(artifacts: Path, rows: list[tuple[str, str]], labels: list[str]) -> str:
    from proxy.models import ModelStore
    from training.fit import FitOptions, fit

    store = ModelStore(artifacts)
    current = store.current(HANDLED_TASK)
    if current is not None:
        print(f"reusing {HANDLED_TASK} {current} in {artifacts}")
        return current
    version = store.next_version(HANDLED_TASK)
    print(f"fitting {HANDLED_TASK} {version} on {len(rows)} Banking77 train rows ...", flush=True)
    started = time.monotonic()
    options = FitOptions(target=0.95, labels=labels, task=HANDLED_TASK, quiet=True)
    result = fit(rows, store.version_dir(HANDLED_TASK, version), options)
    if result.status != "deployed":
        raise SystemExit(f"the gate refused the model: {result.manifest.get('refusal')}")
    store.set_current(HANDLED_TASK, version)
    print(f"  fitted in {time.monotonic() - started:.0f} s")
    return version


async def handled_inputs(url: str, texts: Sequence[str]) -> list[str]:
    """The inputs the served model answers itself, by sending each one once."""
    client = AiohttpClient(url)
    try:
        sem = asyncio.Semaphore(16)

        async def one(text: str) -> bool:
            async with sem:
                return await client.call(HANDLED_TASK, text) == "handled"

        flags = await asyncio.gather(*(one(t) for t in texts))
    finally:
        await client.close()
    return [t for t, ok in zip(texts, flags, strict=True) if ok]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--artifacts", help="reuse (or keep) the fitted model here")
    p.add_argument("--requests", type=int, default=4000, help="measured handled requests")
    p.add_argument("--deferred-requests", type=int, default=640)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--unloaded-requests", type=int, default=1000,
                   help="handled requests one at a time, for latency without queueing")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of one-at-a-time runs (proxy, floor)")  # fmt: skip
    p.add_argument("--placements", default="spread,one-core",
                   help="where one-at-a-time rounds run: spread, one-core (see above)")  # fmt: skip
    p.add_argument("--teacher-latency-ms", type=float, default=800.0)
    p.add_argument("--clients", default="openai,openai-aiohttp,aiohttp")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tracer serve --workers N (its CPU is the parent's and the workers')",
    )
    p.add_argument("--processes", type=int, default=2,
                   help="also run the openai clients at full concurrency from this many "
                   "processes (0: do not)")  # fmt: skip
    p.add_argument("--canned-reply", type=Path, help=argparse.SUPPRESS)  # the floor's server
    p.add_argument("--canned-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.canned_reply is not None:
        serve_canned(args.canned_reply, args.canned_port)
        return 0

    from training.datasets import load_labelled

    train = load_labelled(args.data, "train")
    test = load_labelled(args.data, "test")
    labels = sorted({y for _, y in train})
    with tempfile.TemporaryDirectory(prefix="tracer-handled-") as tmp:
        work = Path(tmp)
        artifacts = Path(args.artifacts) if args.artifacts else work / "artifacts"
        version = ensure_model(artifacts, train, labels)
        traces = work / "answers.jsonl"
        with traces.open("w", encoding="utf-8") as f:
            for text, label in train + test:
                f.write(json.dumps({"input": text, "label": label}) + "\n")
        with teacher(traces, args.teacher_latency_ms, work / "teacher.log") as teacher_url:
            config = work / "config.yaml"
            write_config(config, teacher_url, work, artifacts, labels)
            with proxy(config, work / "proxy.log", args.workers) as (url, pid):
                texts = [t for t, _ in test]
                started = time.monotonic()
                handled = asyncio.run(handled_inputs(url, texts))
                share = len(handled) / len(texts)
                print(f"model {version}: handles {len(handled)} of {len(texts)} Banking77 test "
                      f"inputs ({100 * share:.1f}%); probe took {time.monotonic() - started:.0f} s "
                      "(its deferred inputs waited for the teacher)", flush=True)  # fmt: skip
                runs = []
                for kind in args.clients.split(","):
                    run = asyncio.run(
                        measure("handled", kind, url, pid, HANDLED_TASK, handled,
                                args.requests, args.warmup, args.concurrency)
                    )  # fmt: skip
                    print(run.row(), flush=True)
                    runs.append(run)
                for kind in args.clients.split(",") if args.processes > 1 else []:
                    if kind.startswith("openai"):
                        run = measure_in_processes(
                            "handled", kind, url, pid, HANDLED_TASK, handled, args.requests,
                            args.warmup, args.concurrency, args.processes,
                        )  # fmt: skip
                        print(run.row(), flush=True)
                        runs.append(run)
                # One at a time, each client against the proxy and against a bare uvicorn app
                # that returns a recorded handled reply (the floor of client and HTTP), in
                # interleaved rounds so that the machine's noise falls on both alike.
                reply = work / "reply.json"
                record_reply(url, handled[0], reply)
                with canned(reply, work / "canned.log") as (canned_url, canned_pid):
                    for _, placement, kind in itertools.product(
                        range(args.rounds), args.placements.split(","), args.clients.split(",")
                    ):
                        with placed(placement, [pid, canned_pid]):
                            for name, target, target_pid in (
                                ("handled", url, pid),
                                ("canned reply, no proxy (floor)", canned_url, canned_pid),
                            ):
                                run = asyncio.run(
                                    measure(name, kind, target, target_pid, HANDLED_TASK,
                                            handled, args.unloaded_requests, 100, 1)
                                )  # fmt: skip
                                run.placement = placement
                                print(run.row(), flush=True)
                                runs.append(run)
                for kind in args.clients.split(","):
                    run = asyncio.run(
                        measure(f"deferred ({args.teacher_latency_ms:.0f} ms teacher)", kind,
                                url, pid, DEFERRED_TASK, texts, args.deferred_requests,
                                args.concurrency, args.concurrency)
                    )  # fmt: skip
                    print(run.row(), flush=True)
                    runs.append(run)
    print()
    print("| path | client | concurrency | requests | p50 ms | p99 ms | req/s "
          "| proxy CPU ms/req | client CPU ms/req | decisions | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(run.row())
    # One at a time: each proxy run is followed by its floor run, same client, round, placement.
    pairs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run, floor in pairwise(runs):
        if run.name == "handled" and run.concurrency == 1 and floor.name.startswith("canned"):
            key = (run.client, run.placement)
            pairs.setdefault(key, []).append((1000 * run.pct(0.5), 1000 * floor.pct(0.5)))
    for (client, placement), rounds in pairs.items():
        proxied, floors = [p for p, _ in rounds], [f for _, f in rounds]
        added = [p - f for p, f in rounds]
        met = "met" if median(added) <= TARGET_ADDED_MS else "missed"
        print(f"{client}, one at a time, {placement}, {len(rounds)} rounds: p50 "
              f"{', '.join(f'{x:.2f}' for x in proxied)} ms (median {median(proxied):.2f}); "
              f"floor {', '.join(f'{x:.2f}' for x in floors)} (median {median(floors):.2f}); "
              f"the proxy adds {', '.join(f'{x:.2f}' for x in added)} "
              f"(median {median(added):.2f}; target ≤ {TARGET_ADDED_MS}: {met})")  # fmt: skip
    for run in runs:
        if run.name == "handled" and run.concurrency > 1:
            rps = run.n / run.wall_s
            print(f"{run.client}, {run.concurrency} concurrent: {rps:.0f} req/s (target ≥ "
                  f"{TARGET_RPS:.0f}: {'met' if rps >= TARGET_RPS else 'missed'}), "
                  f"p50 {1000 * run.pct(0.5):.2f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
