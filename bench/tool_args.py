"""Local tool-call arguments on SNIPS: agreement, coverage, confidence, speed. Not run by CI.

Fits `training.tool_args.fit_arguments` on the full SNIPS train split (13,784 calls,
intent = tool, slots = arguments) and serves the validate split (700) through
`router.tool_args.ArgumentExtractor`, given the true tool. Prints exact whole-call
argument agreement (overall and per tool), coverage (calls the plan answers, calls
its sources could reproduce at all), fit seconds, per-call extraction latency, and
agreement of the most confident calls: what a calibrated threshold can reach.

    .venv/bin/python bench/tool_args.py
    .venv/bin/python bench/tool_args.py --json /tmp/tool-args.json

Data: ../shared/datasets/snips (relative to the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402

from router.tool_args import ArgumentExtractor, tokenize  # noqa: E402
from training.datasets import load_snips  # noqa: E402
from training.tool_args import (  # noqa: E402
    agreement_by_coverage,
    coverage_at,
    evaluate_arguments,
    fit_arguments,
)

SNIPS = REPO.parent / "shared" / "datasets" / "snips"
COVERAGES = (0.5, 0.7, 0.8, 0.9, 1.0)
TARGETS = (0.9, 0.95, 0.98)
#: 20 tokens, the size the latency budget is stated for
PROBE = (
    "BookRestaurant",
    "Book a table for four at a highly rated sushi bar in San Jose, CA tonight at 8 pm",
)


def _latency(
    extractor: ArgumentExtractor, calls: list[tuple[str, str]], rounds: int
) -> dict[str, float]:
    """Median and p99 of one `extract` call, in microseconds, after a warm-up pass."""
    for tool, text in calls:
        extractor.extract(tool, text)
    times = []
    for _ in range(rounds):
        for tool, text in calls:
            t0 = time.perf_counter_ns()
            extractor.extract(tool, text)
            times.append((time.perf_counter_ns() - t0) / 1000)
    times.sort()
    return {
        "calls": len(times),
        "median_us": round(statistics.median(times), 1),
        "p99_us": round(times[int(0.99 * (len(times) - 1))], 1),
    }


def _holdout(train: list[Any], share: float = 0.15) -> dict[str, Any]:
    """Refit on the rest of train and score a random `share` of it: 2,000 calls give a
    steadier confidence curve than validate's 700."""
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    cut = round(len(order) * (1 - share))
    plan, model = fit_arguments([train[i] for i in order[:cut]])
    extractor = ArgumentExtractor(plan, model.SerializeToString())
    report = evaluate_arguments(extractor, [train[i] for i in order[cut:]])
    confidence, correct = report["confidence"], report["correct"]
    return {
        "calls": report["calls"],
        "exact": report["exact"],
        "by_confidence": agreement_by_coverage(confidence, correct, COVERAGES),
        "coverage_at": {str(t): coverage_at(confidence, correct, t) for t in TARGETS},
    }


def run(rounds: int) -> dict[str, Any]:
    train, validate = load_snips(SNIPS, "train"), load_snips(SNIPS, "validate")
    t0 = time.perf_counter()
    plan, model = fit_arguments(train)
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tool_args.onnx"
        onnx.save(model, str(path))
        model_mb = path.stat().st_size / 1e6
        extractor = ArgumentExtractor(plan, path)
    report = evaluate_arguments(extractor, validate)
    confidence, correct = report.pop("confidence"), report.pop("correct")
    calls = [(ex.tool, ex.text) for ex in validate]
    return {
        "train_calls": len(train),
        "validate_calls": len(validate),
        "fit_seconds": round(fit_s, 1),
        "model_mb": round(model_mb, 1),
        "plan_kb": round(len(json.dumps(plan)) / 1e3, 1),
        "exact": report["exact"],
        "answered": report["answered"],
        "reproducible": report["reproducible"],
        "per_tool": report["per_tool"],
        "per_parameter": report["per_parameter"],
        "by_confidence": agreement_by_coverage(confidence, correct, COVERAGES),
        "coverage_at": {str(t): coverage_at(confidence, correct, t) for t in TARGETS},
        "latency_validate": _latency(extractor, calls, rounds),
        "latency_20_tokens": {
            "tokens": len(tokenize(PROBE[1])),
            **_latency(extractor, [PROBE], rounds * 200),
        },
        "train_holdout": _holdout(train),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def show(r: dict[str, Any]) -> None:
    print(
        f"SNIPS: fit on {r['train_calls']} train calls in {r['fit_seconds']} s "
        f"(emissions model {r['model_mb']} MB, plan {r['plan_kb']} kB)"
    )
    print(
        f"validate ({r['validate_calls']} calls, true tool given): exact whole-call "
        f"agreement {r['exact']:.3f}; answered {r['answered']:.3f}; "
        f"reproducible by the plan's sources {r['reproducible']:.3f}"
    )
    print(f"\n{'tool':<22} {'calls':>5} {'exact':>6} {'answered':>9} {'reproducible':>13}")
    for tool, row in r["per_tool"].items():
        print(
            f"{tool:<22} {row['calls']:>5} {row['exact']:>6.3f} {row['answered']:>9.3f} "
            f"{row['reproducible']:>13.3f}"
        )
    worst = sorted(
        ((v, f"{t}.{p}") for t, params in r["per_parameter"].items() for p, v in params.items())
    )[:6]
    print("\nweakest parameters: " + ", ".join(f"{name} {v:.3f}" for v, name in worst))
    print("\nmost confident share  agreement  confidence threshold")
    for row in r["by_confidence"]:
        print(f"{row['coverage']:>20.2f}  {row['agreement']:>9.3f}  {row['threshold']:>20.4f}")
    reach = ", ".join(f"{c:.3f} at {t}" for t, c in r["coverage_at"].items())
    print(f"largest coverage at agreement (in sample): {reach}")
    h = r["train_holdout"]
    reach = ", ".join(f"{c:.3f} at {t}" for t, c in h["coverage_at"].items())
    curve = ", ".join(f"{x['agreement']:.3f} at {x['coverage']:.1f}" for x in h["by_confidence"])
    print(
        f"train holdout ({h['calls']} calls, fit on the other 85%): exact {h['exact']:.3f}; "
        f"agreement by coverage {curve}; largest coverage {reach}"
    )
    lat, probe = r["latency_validate"], r["latency_20_tokens"]
    print(
        f"\nextract latency over validate: median {lat['median_us']} us, p99 {lat['p99_us']} us "
        f"({lat['calls']} calls)"
    )
    print(
        f"extract latency, {probe['tokens']}-token BookRestaurant call: median "
        f"{probe['median_us']} us, p99 {probe['p99_us']} us"
    )
    print(f"({r['cpus']} CPUs, load average {r['load_average']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="latency passes over validate")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not SNIPS.is_dir():
        sys.exit(f"SNIPS not found at {SNIPS}")
    result = run(args.rounds)
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
