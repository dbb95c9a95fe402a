"""What an idle gap costs the next prediction on this machine.

One at a time, each request reaches the proxy after its vCPU has sat idle through the
client's turn (about 2 ms with the openai client). On a KVM guest the idle vCPU halts
once cpuidle's poll limit has passed (the ``haltpoll`` driver; the limit is 0 on the
machine of docs/benchmarks.md), and the code that runs after the wake-up can run slower
than the same code back to back. This times, in one process and one thread,
``Router.predict`` on Banking77 test inputs and, for scale, a one-node ONNX graph and a
small numpy expression, each call:

- ``back-to-back``: right after the previous call;
- ``sleep``: after a gap of ``time.sleep`` (the vCPU may idle), for each of ``--gaps-ms``;
- ``spin``: after the same gap of busy waiting (never idle), so that what idling costs
  can be told from what time alone costs (likely other work on the host wearing the
  caches down).

Conditions run in ``--rounds`` interleaved rounds. Medians of wall time and of the
thread's CPU time are printed, with the cpuidle driver and haltpoll's poll limit.

    .venv/bin/python bench/wakeup.py --artifacts /tmp/b77-handled2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handled import DATASET, HANDLED_TASK, ensure_model


def spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def one_node_graph() -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(
    call: Callable[[int], object], wait: str, gap_s: float, n: int
) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU seconds of `n` calls, each after a gap spent as `wait` says."""
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(n):
        if wait == "sleep":
            time.sleep(gap_s)
        elif wait == "spin":
            spin(gap_s)
        c0, w0 = time.thread_time(), time.perf_counter()
        call(i)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.thread_time() - c0)
    return walls, cpus


def idle_settings() -> str:
    """What decides how long an idle vCPU polls before it halts."""
    cpuidle = Path("/sys/devices/system/cpu/cpuidle")
    files = {
        "cpuidle driver": cpuidle / "current_driver",
        "governor": cpuidle / "current_governor",
        "haltpoll guest_halt_poll_ns": Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    }
    found = [f"{name} {path.read_text().strip()}" for name, path in files.items() if path.is_file()]
    return "; ".join(found) or "no cpuidle information"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--artifacts", help="model store holding a Banking77 model (fitted if absent)")
    p.add_argument("--calls", type=int, default=500, help="calls per condition and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gaps-ms", default="0.2,1,3", help="gaps before each call, comma-separated")
    args = p.parse_args(argv)

    from proxy.models import ModelStore
    from router import Router
    from training.datasets import load_labelled

    train = load_labelled(args.data, "train")
    texts = [t for t, _ in load_labelled(args.data, "test")]
    with tempfile.TemporaryDirectory(prefix="tracer-wakeup-") as tmp:
        store_dir = Path(args.artifacts) if args.artifacts else Path(tmp)
        version = ensure_model(store_dir, train, sorted({y for _, y in train}))
        router = Router.load(ModelStore(store_dir).version_dir(HANDLED_TASK, version))
    relu = one_node_graph()
    x = np.ones((1, 8), np.float32)
    subjects: dict[str, Callable[[int], object]] = {
        "Router.predict": lambda i: router.predict(texts[i % len(texts)]),
        "one-node ONNX graph": lambda i: relu.run(None, {"x": x}),
        "numpy tanh(x) + 1": lambda i: np.tanh(x) + 1,
    }
    gaps = [float(g) for g in args.gaps_ms.split(",")]
    conditions = [("back-to-back", 0.0)] + [(w, g) for g in gaps for w in ("sleep", "spin")]
    print(f"{idle_settings()}; {args.calls} calls x {args.rounds} rounds per condition")
    for subject, call in subjects.items():
        timed(call, "back-to-back", 0.0, 200)  # warm up
        walls: dict[tuple[str, float], list[float]] = {c: [] for c in conditions}
        cpus: dict[tuple[str, float], list[float]] = {c: [] for c in conditions}
        for _ in range(args.rounds):
            for wait, gap in conditions:
                w, c = timed(call, wait, gap / 1000, args.calls)
                walls[wait, gap] += w
                cpus[wait, gap] += c
        base = median(walls["back-to-back", 0.0])
        for wait, gap in conditions:
            what = wait if wait == "back-to-back" else f"{gap:g} ms {wait}"
            wall, cpu = median(walls[wait, gap]), median(cpus[wait, gap])
            print(f"{subject:22s} {what:14s} wall p50 {wall * 1e6:7.1f} us  "
                  f"cpu p50 {cpu * 1e6:7.1f} us  x{wall / base:5.2f} of back-to-back")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
