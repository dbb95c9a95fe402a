"""`tracer demo`: watch the flywheel turn, on one machine, with nothing to download.

A simulated teacher (``proxy.sim.teacher``) plays the LLM and answers from the labels of a
data set; the proxy runs in this process on a free loopback port, with its SQLite store and
model artifacts in a temporary folder. A labelled stream is replayed in "days": each day's
rows go through the proxy with the official openai client, and at the day's end the proxy's
refit loop fits on the traces so far (the same child-process fit and parity gate that the
background loop runs, called directly so that every run is the same). The table shows the
share of traffic the surrogate answered, how often it agreed with the labels, what it saved
and how fast each path was.

The default stream is the project's own synthetic intents; ``--data`` takes a real set, e.g.
``--data ../shared/datasets/banking77``. The machinery is in ``proxy.sim.flywheel``, which
``bench/flywheel.py`` reuses.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..refit import RefitOutcome
from .flywheel import (
    HANDLED,
    TASK,
    TEACHER_MODEL,
    TEACHER_SIDE,
    Day,
    DemoError,
    Flywheel,
    Row,
    Settings,
    load_rows,
    percentile,
    stream_defaults,
)


# -- presentation -----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.1f} ms"


def fit_note(r: RefitOutcome, fly: Flywheel, full: bool = True) -> str:
    """One fit, in words: what the gate said, and what became of it."""
    if r.outcome == "deployed":
        return f"{r.version} served"
    if r.outcome == "candidate":
        head = f"{r.version} passed the gate"
        return f"{head}, to be compared with the served version on fresh traffic" if full else head
    if r.outcome in ("refused", "failed"):
        head = f"{r.version} {r.outcome}"
        return f"{head}: {fly.refusal(r.version) or r.reason}" if full else head
    return f"{r.version} {r.outcome}: {r.reason}" if full else f"{r.version} {r.outcome}"


def refit_note(day: Day, fly: Flywheel, full: bool = True) -> str:
    if not day.refits:
        return "-"
    return "; ".join(fit_note(r, fly, full) for r in day.refits) + (
        f" ({day.refit_seconds:.0f} s)" if full else ""
    )


def day_table(days: Sequence[Day], fly: Flywheel, title: str) -> Table:
    table = Table(title=title)
    for name in ("day", "requests", "coverage", "agreement\nhandled", "agreement\nall"):
        table.add_column(name, justify="right")
    table.add_column("model\nserved")
    table.add_column("teacher\ncalls", justify="right")
    table.add_column("of which\naudits", justify="right")
    table.add_column("fits during\nthe day")
    for d in days:
        table.add_row(
            str(d.day),
            str(d.requests),
            _pct(d.coverage),
            _pct(d.agreement_handled),
            _pct(d.agreement),
            ", ".join(d.versions) or (d.served or "none"),
            str(d.teacher_calls),
            str(d.audits),
            refit_note(d, fly, full=False),
        )
    return table


def latency_table(days: Sequence[Day]) -> Table:
    table = Table(title="Latency through HTTP, all days (openai client)")
    for name in ("path", "requests", "p50", "p99"):
        table.add_column(name, justify="right" if name != "path" else "left")
    for label, decisions in (("handled (surrogate)", (HANDLED,)), ("teacher", TEACHER_SIDE)):
        secs = [o.seconds for d in days for o in d.outcomes if o.decision in decisions]
        table.add_row(
            label, str(len(secs)), _ms(percentile(secs, 0.5)), _ms(percentile(secs, 0.99))
        )
    return table


# -- the command --------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tracer demo",
        description="Replay a labelled stream through the proxy in days, with a simulated "
        "teacher, and watch coverage grow as the surrogate is refitted behind the parity gate.",
    )
    p.add_argument("--data", help="a labelled data set (folder or file); default: synthetic")
    p.add_argument("--per-day", type=int,
                   help="requests per day (default: from the data, about 40 a label and at "
                   "least 400; 400 for the built-in set)")  # fmt: skip
    p.add_argument("--days", type=int,
                   help="days to replay (default: as many as the data fills, 4 to 6; 6 for "
                   "the built-in set)")  # fmt: skip
    p.add_argument("--teacher-latency-ms", type=float, default=300.0,
                   help="the simulated teacher's latency (default 300)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--target", type=float, default=0.95,
                   help="alpha: agreement with the teacher on handled traffic")  # fmt: skip
    p.add_argument("--min-coverage", type=float, default=0.1,
                   help="the gate refuses a model below this coverage (default 0.1)")  # fmt: skip
    p.add_argument("--embedder", default="tfidf",
                   help="tfidf (default), an encoder folder with model.onnx and "
                   "tokenizer.json, hf:OWNER/NAME (Hugging Face hub), or tfidf+either")  # fmt: skip
    p.add_argument("--horizon", type=int, default=0,
                   help="promise the target on the next N handled requests (default 0: "
                   "on average)")  # fmt: skip
    p.add_argument("--audit-boost", type=int,
                   help="tasks[].audit_boost: sample min(1, N / sampled traces) of the "
                   "traffic while that is above the 2%% audit rate (0: off; default: "
                   "1000, or 40 a label when there are more than 25 labels)")  # fmt: skip
    p.add_argument("--port", type=int, default=0, help="the proxy's port (default: a free one)")
    p.add_argument("--workdir", help="keep the store and artifacts here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the data (default 0)")
    argv = list(argv)
    if argv[:1] == ["--"]:  # `tracer demo -- --days 3`: see proxy/cli.py's delegation
        argv = argv[1:]
    args = p.parse_args(argv)
    for name in ("per_day", "days", "concurrency"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.target < 1:
        p.error("--target must be between 0 and 1")
    if args.teacher_latency_ms < 0:
        p.error("--teacher-latency-ms must not be negative")
    return args


def run(
    rows: Sequence[Row],
    s: Settings,
    workdir: Path,
    console: Console,
    on_day: Any = None,
) -> tuple[list[Day], Flywheel]:
    """Replay ``rows`` in days of ``s.per_day``, refitting after each; the days and figures."""
    days: list[Day] = []
    with Flywheel.running(rows, workdir, s) as fly:
        console.print(f"proxy at {fly.url}, simulated teacher ({TEACHER_MODEL} prices), "
                      f"store and artifacts in {workdir}")  # fmt: skip
        for n in range(s.days):
            chunk = rows[n * s.per_day : (n + 1) * s.per_day]
            if not chunk:
                break
            with console.status(f"day {n + 1}: {len(chunk)} requests (and any fits due)..."):
                day = fly.run_day(n + 1, chunk)
            if day.errors:
                raise DemoError(
                    f"day {n + 1}: {len(day.errors)} of {day.requests} requests failed; "
                    f"first: {day.errors[0]}"
                )
            days.append(day)
            console.print(
                f"day {day.day}: coverage {_pct(day.coverage)}, agreement on handled "
                f"{_pct(day.agreement_handled)}, teacher calls {day.teacher_calls}; "
                f"fits: {refit_note(day, fly)}"
            )
            for r in day.refits:
                advice = fly.advice(r.version) if r.outcome in ("refused", "failed") else None
                if advice:
                    console.print(f"  [dim]{r.version}: {advice}[/dim]")
            if day.fallback is not None:
                console.print(
                    f"day {day.day}: the live audit put the task back on the teacher: "
                    f"{day.fallback}"
                )
            if on_day is not None:
                on_day(day, fly)
        fly.history()  # read while the proxy still runs
        return days, fly


def summary(days: Sequence[Day], fly: Flywheel, console: Console) -> None:
    handled = sum(d.handled for d in days)
    audits = sum(d.audits for d in days)
    total = sum(d.requests for d in days)
    cost, priced = fly.teacher_cost()
    console.print(day_table(days, fly, "The flywheel, day by day"))
    for row in fly.history():
        reason = f": {row['reason']}" if row["reason"] and row["outcome"] != "deployed" else ""
        console.print(f"Fit {row['version']} on {row['n_traces']} traces: {row['outcome']}{reason}")
    console.print(latency_table(days))
    mean = cost / priced if priced else None
    console.print(
        f"Answered by the surrogate: {handled} of {total} requests ({_pct(handled / total)}); "
        f"the teacher also audited {audits} of those in the background (a young task "
        "samples more of its traffic, to calibrate later refits: "
        f"{_pct(fly.metric('tracer_sampling_rate', task=TASK))} by the end, falling "
        "toward audit_rate, 2%, as sampled traces accumulate). "
        f"Estimated cost saved: ${fly.cost_saved():.6f} "
        "(tracer_cost_saved_usd_total: each handled request not audited counts the mean "
        f"cost of the teacher calls stored so far; {TEACHER_MODEL} list prices via LiteLLM"
        + (f", mean ${mean:.8f} a call)." if mean is not None else ").")
    )
    if mean is not None:
        console.print(
            f"At that price, a million requests at the last day's coverage "
            f"({_pct(days[-1].coverage)}) would save about "
            f"${1e6 * days[-1].coverage * mean:,.2f}."
        )


def demo_command(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: room for the table
        console = Console(width=120)
    try:
        rows, s = stream(args, console)
    except DemoError as exc:
        console.print(f"[bold red]tracer demo failed:[/bold red] {exc}")
        return 1
    return _demo(args, rows, s, console)


def stream(args: argparse.Namespace, console: Console) -> tuple[list[Row], Settings]:
    """The rows to replay and the settings; what the user did not give comes from the data."""
    if args.data is None:
        from .synthetic import INTENTS

        chosen = stream_defaults(None, len(INTENTS))
        per_day, days = args.per_day or chosen.per_day, args.days or chosen.days
        rows = load_rows(None, per_day * days, args.seed)
    else:
        pool = load_rows(args.data, None, args.seed, pooled=True)
        n_labels = len({y for _, y in pool})
        chosen = stream_defaults(len(pool), n_labels)
        per_day, days = args.per_day or chosen.per_day, args.days or chosen.days
        rows = pool[: per_day * days]
        console.print(
            f"{args.data}: {len(pool):,} labelled rows, {n_labels} labels: {per_day:,} "
            f"requests a day for {days} days"
            + ("" if args.per_day and args.days else " (chosen from the data; --per-day, --days)")
        )
    s = Settings(
        per_day=per_day,
        days=days,
        teacher_latency_ms=args.teacher_latency_ms,
        concurrency=args.concurrency,
        target=args.target,
        min_coverage=args.min_coverage,
        embedder=args.embedder,
        horizon=args.horizon,
        audit_boost=chosen.audit_boost if args.audit_boost is None else args.audit_boost,
        port=args.port,
    )
    return rows, s


def _demo(args: argparse.Namespace, rows: list[Row], s: Settings, console: Console) -> int:
    for name in ("tracer", "LiteLLM", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the demo reports outcomes itself
    try:
        try:
            import openai  # noqa: F401
        except ImportError:
            raise DemoError("the demo drives the proxy with the openai client: "
                            "pip install openai") from None  # fmt: skip
        if len(rows) < s.per_day * s.days:
            console.print(f"[yellow]{len(rows)} rows: fewer than {s.days} days of "
                          f"{s.per_day}; replaying what there is[/yellow]")  # fmt: skip
        with contextlib.ExitStack() as stack:
            if args.workdir:
                workdir = Path(args.workdir)
                try:
                    workdir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DemoError(f"cannot use --workdir {workdir}: {exc}") from None
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracer-")))
            days, fly = run(rows, s, workdir, console)
            summary(days, fly, console)
            history = fly.history()
            if not any(d.handled for d in days) and not any(
                row["outcome"] == "deployed" for row in history
            ):
                last = history[-1] if history else None
                advice = fly.advice(last["version"]) if last else None
                raise DemoError(
                    "no model was ever deployed, so the teacher answered everything; last fit: "
                    + (f"{last['version']} {last['outcome']}: {last['reason']}" if last else "none")
                    + ". "
                    + (advice or "More traces a day (--per-day, --days) give the gate more to "
                       "certify.")
                )  # fmt: skip
    except DemoError as exc:
        console.print(f"[bold red]tracer demo failed:[/bold red] {exc}")
        return 1
    return 0
