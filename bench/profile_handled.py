"""Where a handled request's time goes: `tracer serve` under cProfile, the lean client.

Uses `bench/handled.py`'s pieces: the simulated teacher, its config and a fitted
Banking77 model (``--artifacts``, fitted there when missing). The handled inputs are
found first on an unprofiled proxy, so the profiled one sees only handled requests,
one at a time; then the request path's cumulative times are printed per request.

    .venv/bin/python bench/profile_handled.py --artifacts /tmp/b77-artifacts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handled as bench

PARTS = {  # (file suffix, function): what docs/benchmarks.md's profile table calls it
    ("router/router.py", "predict"): "the model: Router.predict (tokenise, ONNX, decide)",
    ("httptools_impl.py", "data_received"): "uvicorn: HTTP parsing",
    ("starlette/responses.py", "__call__"): "sending the response",
    ("proxy/http.py", "read_json_object"): "reading and checking the body",
    ("proxy/local.py", "completion"): "rendering the answer",
    ("proxy/routes/chat.py", "record_handled"): "the record (sampling, metrics, decision)",
    ("proxy/validate.py", "validate_chat"): "parameter validation",
    ("proxy/routes/chat.py", "chat_completions"): "the chat route, all of it",
    ("uvicorn/middleware/proxy_headers.py", "__call__"): "the ASGI app, all of it",
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(bench.DATASET))
    p.add_argument("--artifacts", required=True)
    p.add_argument("--requests", type=int, default=6000)
    args = p.parse_args(argv)
    from training.datasets import load_labelled

    train, test = load_labelled(args.data, "train"), load_labelled(args.data, "test")
    labels = sorted({y for _, y in train})
    artifacts = Path(args.artifacts)
    bench.ensure_model(artifacts, train, labels)
    with tempfile.TemporaryDirectory(prefix="tracer-profile-") as tmp:
        work = Path(tmp)
        traces = work / "answers.jsonl"
        traces.write_text(
            "".join(json.dumps({"input": t, "label": y}) + "\n" for t, y in train + test)
        )
        with bench.teacher(traces, 0.0, work / "teacher.log") as teacher_url:
            config = work / "config.yaml"
            bench.write_config(config, teacher_url, work, artifacts, labels)
            with bench.proxy(config, work / "probe.log") as (url, _):
                handled = asyncio.run(bench.handled_inputs(url, [t for t, _ in test]))
            (work / "tracer.db").unlink(missing_ok=True)
            port = bench.free_port()
            profile = work / "serve.prof"
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "proxy.cli"]
            cmd += ["serve", "--config", str(config), "--port", str(port), "--log-level", "warning"]
            proc = subprocess.Popen(cmd, cwd=bench.REPO, env=bench.child_env())
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the profiled proxy did not start")
                time.sleep(0.2)
            run = asyncio.run(
                bench.measure("handled", "aiohttp", f"{base}/v1", proc.pid, bench.HANDLED_TASK,
                              handled, args.requests, 200, 1)
            )  # fmt: skip
            print(run.row())
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    n = args.requests + 200
    print(f"cumulative time per request, profiled ({n} requests):")
    for (path, function), name in PARTS.items():
        cum = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(path) and fn == function)
        print(f"  {1000 * cum / n:6.3f} ms  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
