"""Three lanes against two on Banking77: a smaller LLM answering, per cluster, what the
surrogate defers, only where it is certified.

Banking77's train split is shuffled with a seed and streamed through the proxy 2,000
requests a day for 4 days, twice on the same stream: with a lane (surrogate, smaller
model, teacher) and without (surrogate, teacher). The teacher (simulated) answers each
input with its label. The smaller model (simulated) errs on a fixed share of each
intent's inputs, from a seeded table: 1% on half of the intents (agreement 0.99), 15%
on a quarter (0.85), 40% on the rest (0.6); it errs on the same inputs every time it
is asked. Prices: teacher $5 per 1,000 calls, smaller model $0.30 per 1,000, set as
each model's `model_info`.

Cost is every upstream call the proxy made (answers, audits, shadow checks), from
`tracer_lane_cost_usd_total`; agreement is exact equality of each answer with the
teacher's. Each day's teacher answers are also counted by why the proxy sent them there
(its `x-tracer-reason`): out of distribution, drawn for the teacher at the sampling
rate, a lane that gave nothing to serve, or deferred with no lane to take it.

    .venv/bin/python bench/lanes.py                   # seed 0, 4 days of 2,000
    .venv/bin/python bench/lanes.py --seed 1 --json /tmp/lanes.json

Targets (issue 18): overall agreement >= alpha every day; each lane's own agreement
>= alpha; day-4 cost <= 70% of the two-lane proxy's on the same stream.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console  # noqa: E402

from proxy.sim.demo import run  # noqa: E402
from proxy.sim.flywheel import TASK, Day, Flywheel, Settings, load_rows  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "banking77"
TEACHER_USD, LANE_USD = 0.005, 0.0003
LANES = ("surrogate", "small", "teacher")


def noise_table(labels: list[str], seed: int) -> dict[str, float]:
    """Half of the intents at 1% wrong, a quarter at 15%, the rest at 40%: seeded."""
    order = sorted(labels)
    random.Random(seed).shuffle(order)
    half, quarter = len(order) // 2, len(order) // 4
    return {y: 0.01 if i < half else 0.15 if i < half + quarter else 0.40
            for i, y in enumerate(order)}  # fmt: skip


def spent(fly: Flywheel) -> float:
    return sum(fly.metric("tracer_lane_cost_usd_total", task=TASK, lane=x) for x in LANES)


# Why the teacher answered a request, from the proxy's reason header (first match wins).
WHY_TEACHER = (
    ("no model yet", "no model deployed"),
    ("fallback", "fallback:"),
    ("out of distribution", "out of distribution"),
    ("drawn for the teacher", "sampled for the teacher"),
    ("lane gave no answer to serve", ": the teacher answers"),
    ("deferred, no lane to take it", "deferred:"),
)


def why_teacher(day: Day) -> dict[str, int]:
    """The teacher's answers of the day, by why the proxy sent them there."""
    counts = dict.fromkeys([name for name, _ in WHY_TEACHER] + ["other"], 0)
    for o in day.outcomes:
        if (o.lane or "teacher") == "teacher":
            name = next((n for n, key in WHY_TEACHER if key in o.reason), "other")
            counts[name] += 1
    return {name: n for name, n in counts.items() if n}


def day_figures(day: Day, usd: float, fly: Flywheel) -> dict[str, Any]:
    by_lane: dict[str, dict[str, Any]] = {}
    for lane in LANES:
        mine = [o for o in day.outcomes if (o.lane or "teacher") == lane]
        agreed = sum(o.agrees for o in mine)
        by_lane[lane] = {
            "share": len(mine) / day.requests,
            "agreement": agreed / len(mine) if mine else None,
        }
    lanes = fly.state.lanes.get(TASK)
    certificates = lanes.certificates if lanes is not None else {}
    return {
        "day": day.day,
        "requests": day.requests,
        "errors": len(day.errors),
        "agreement": day.agreement,
        "lanes": by_lane,
        "teacher_because": why_teacher(day),
        "cost_usd": usd,
        "teacher_only_usd": day.requests * TEACHER_USD,
        "certified_clusters": {m: len(c.lanes) for m, c in certificates.items()},
        "lane_round": lanes.round if lanes is not None else 0,
        "checks": len(lanes.checks) if lanes is not None else 0,
        "versions": day.versions,
    }


def one_run(rows: list[tuple[str, str]], s: Settings) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    marks = [0.0]

    def on_day(day: Day, fly: Flywheel) -> None:
        deadline = time.monotonic() + 60
        while fly.state.lane_calls.jobs and time.monotonic() < deadline:
            time.sleep(0.05)  # shadow checks still out: their cost belongs to this day
        total = spent(fly)
        figures.append(day_figures(day, total - marks[-1], fly))
        marks.append(total)

    with tempfile.TemporaryDirectory(prefix="tracer-lanes-") as tmp:
        run(rows, s, Path(tmp), Console(stderr=True, quiet=True), on_day)
    return figures


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(three: list[dict[str, Any]], two: list[dict[str, Any]], alpha: float) -> None:
    print("| day | surrogate | small | teacher | agreement: surrogate / small / teacher / all "
          "| cost | two lanes (their surrogate share) | ratio | teacher only "
          "| certified clusters: alone / to confirm |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a, b in zip(three, two, strict=True):
        lanes = a["lanes"]
        agreements = " / ".join(fmt(lanes[x]["agreement"]) for x in LANES)
        print(f"| {a['day']} | {fmt(lanes['surrogate']['share'])} | {fmt(lanes['small']['share'])} "
              f"| {fmt(lanes['teacher']['share'])} | {agreements} / {fmt(a['agreement'])} "
              f"| ${a['cost_usd']:.2f} | ${b['cost_usd']:.2f} "
              f"({fmt(b['lanes']['surrogate']['share'])}) "
              f"| {a['cost_usd'] / b['cost_usd']:.3f} "
              f"| ${a['teacher_only_usd']:.2f} "
              f"| {a['certified_clusters'].get('answers', 0)} / "
              f"{a['certified_clusters'].get('confirms', 0)} "
              f"(round {a['lane_round']}, {a['checks']} checks) |")  # fmt: skip
    every_day = all((d["agreement"] or 0) >= alpha for d in three)
    per_lane = all(
        d["lanes"][x]["agreement"] is None or d["lanes"][x]["agreement"] >= alpha
        for d in three for x in LANES
    )  # fmt: skip
    for name, arm in (("three lanes", three), ("two lanes", two)):
        print(f"\nwhy the teacher answered, {name}:")
        for d in arm:
            print(
                f"  day {d['day']}: "
                + ", ".join(f"{k} {n}" for k, n in d["teacher_because"].items())
            )
    for name, arm in (("three lanes", three), ("two lanes", two)):
        served = "; ".join(f"day {d['day']}: {', '.join(d['versions']) or '-'}" for d in arm)
        print(f"\nversions served, {name}: {served}")
    ratio = three[-1]["cost_usd"] / two[-1]["cost_usd"]
    total = sum(d["cost_usd"] for d in three) / sum(d["cost_usd"] for d in two)
    print(f"\noverall agreement >= {alpha} every day: {every_day}; each lane's >= {alpha} every "
          f"day: {per_lane}; day-{three[-1]['day']} cost / two lanes: {ratio:.3f} (target <= "
          f"0.70): {ratio <= 0.70}; all days: {total:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--per-day", type=int, default=2000)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--json", help="write the figures of both runs here")
    args = p.parse_args(argv)

    rows = load_rows(args.data, args.per_day * args.days, args.seed)
    table = noise_table(sorted({y for _, y in rows}), args.seed)
    common = {"per_day": args.per_day, "days": args.days, "teacher_latency_ms": 0.0,
              "concurrency": 16, "target": args.target, "confidence": args.confidence,
              "min_new_traces": 1000, "prices": (TEACHER_USD, LANE_USD)}  # fmt: skip
    started = time.monotonic()
    three = one_run(rows, Settings(**common, lane_noise=table))
    two = one_run(rows, Settings(**common))
    wall = time.monotonic() - started
    print(f"{args.data}: {args.per_day} a day for {args.days} days, seed {args.seed}, alpha "
          f"{args.target}, confidence {args.confidence}; {wall:.0f} s\n")  # fmt: skip
    report(three, two, args.target)
    if args.json:
        Path(args.json).write_text(json.dumps({"three_lanes": three, "two_lanes": two}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
