"""`tracer scan TRACES.jsonl`: what would a surrogate give on these traces, before any deploy?

Coverage (the share of teacher calls it would avoid) and the verdict of the parity gate
at several targets (α 0.90, 0.95, 0.97 by default), with the default embedder.

**One fit, calibrated at each α.** The stages that do not depend on α run once (clean,
split, embed); the candidates are chosen once, on validation, at the middle α (what
`tracer fit --target` does at that α); the winner is exported and checked as in a fit.
Then, for each α, the threshold is certified on the calibration split through the
router and the gate's own test (`training.gate.gate`) says deploy or refuse, and why.
The calibration split is seen by neither the training nor the choice, so each α's
figure is a valid certificate on its own (three looks at one split: together they hold
at 3δ, which is why a scan deploys nothing; a proxy's fit certifies its own α afresh).
At the other α the model is the one chosen for the middle one, so a fit dedicated to
that α, free to choose another candidate, may reach a little more coverage than shown.

δ is what the proxy's first fit of a task spends, (1 - confidence) · 6/π²
(`proxy.refit.delta_share(1)`), so the figures are those a first deploy would get.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.acceptor import simple_score
from router.settings import FitOptions
from training import gate, selection, stages
from training.acceptors import cross_fit_scores
from training.bound import calibrate, start_count_for
from training.progress import Progress
from training.stages import Refusal, TraceInput

ALPHAS = (0.90, 0.95, 0.97)
FIRST_FIT_SHARE = 6.0 / math.pi**2  # proxy.refit.delta_share(1)


@dataclass
class Verdict:
    """The gate's answer at one α, and what it would save."""

    alpha: float
    deploy: bool
    code: str | None = None  # the refusal's code
    reason: str | None = None
    coverage: float = 0.0  # certified on calibration: the share of calls answered locally
    agreement: float | None = None
    lower_bound: float | None = None
    threshold: float | None = None
    test_coverage: float | None = None  # the held-out test split, only reported
    test_agreement: float | None = None
    calls_avoided: int = 0  # of the file's calls, at the certified coverage
    usd_saved: float | None = None


def _validation_coverage(
    chosen: selection.Selection,
    feats: stages.Features,
    opts: FitOptions,
    alpha: float,
    delta: float,
) -> float:
    """The chosen pair's coverage at `alpha` on validation, as `selection.select` measures
    it: where the calibration test starts. Call before export (which refits the winner)."""
    probs = chosen.winner.predict_proba(feats.x_val, chosen.reducer)
    correct = probs.argmax(axis=1) == feats.y_val
    if chosen.acceptor == "learned":
        score = cross_fit_scores(chosen.val_features, correct, opts.seed)
    else:
        score = simple_score(chosen.acceptor, chosen.val_features)
    if chosen.ood_min is not None:
        score = np.where(chosen.val_features[:, 3] < chosen.ood_min, -np.inf, score)
    cal = calibrate(
        score, correct, alpha, delta, start_count=start_count_for(len(score), opts.min_coverage)
    )
    return max(cal.coverage, cal.best_empirical_coverage)


def scan(
    traces: TraceInput, options: FitOptions | None = None, alphas: Sequence[float] = ALPHAS
) -> tuple[list[Verdict], dict[str, Any]]:
    """A verdict for each α, and what the fit saw (data, splits, chosen model)."""
    alphas = sorted(alphas)
    middle = alphas[len(alphas) // 2]
    opts = (options or FitOptions(delta_share=FIRST_FIT_SHARE)).with_(
        target=middle, quiet=True, report=False
    )
    delta = opts.delta
    progress = Progress(quiet=True)
    manifest: dict[str, Any] = {}
    info: dict[str, Any] = {
        "embedder": opts.embedder,
        "chosen_at": middle,
        "delta": delta,
        "confidence": opts.confidence,
        "min_coverage": opts.min_coverage,
    }
    try:
        cleaned = stages.load_and_clean(traces, opts, manifest, progress)
        splits = stages.make_splits(cleaned, opts, manifest, progress)
        feats = stages.embed_splits(splits, opts, manifest, progress)
    except Refusal as refusal:
        info["data"] = manifest.get("data")
        return [Verdict(a, False, refusal.code, refusal.reason) for a in alphas], info
    info.update(data=manifest["data"], splits=manifest["splits"], labels=len(feats.labels))
    chosen = selection.select(feats, opts, middle, delta, progress)
    info["model"] = f"{chosen.winner.name} + {chosen.acceptor} acceptor"
    starts = {a: _validation_coverage(chosen, feats, opts, a, delta) for a in alphas}
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="tracer-scan-") as tmp:
        selection.export(chosen, feats, opts, Path(tmp), manifest, progress)
        pipe = selection.check_parity(chosen, feats, splits, Path(tmp), manifest, progress)
        n_cal = len(splits.index["calibration"])
        for alpha in alphas:
            at = opts.with_(target=alpha)
            if n_cal < gate.min_testable(alpha, delta):
                reason = (
                    f"calibration split has {n_cal} traces; a bound at alpha={alpha}, "
                    f"delta={delta:.3g} needs at least {gate.min_testable(alpha, delta)}"
                )
                verdicts.append(Verdict(alpha, False, "too_few_calibration", reason))
                continue
            figures: dict[str, Any] = {}
            cal = gate.calibrate_threshold(
                pipe, splits, cleaned.answers, starts[alpha], alpha, delta, at, figures, progress
            )
            verdict = Verdict(
                alpha,
                True,
                coverage=cal.coverage,
                agreement=cal.agreement,
                lower_bound=cal.lower_bound,
                threshold=cal.threshold,
            )
            try:
                gate.gate(cal, at)
            except Refusal as refusal:
                verdict.deploy, verdict.code, verdict.reason = False, refusal.code, refusal.reason
                verdict.coverage = 0.0  # a refused model answers nothing
            if verdict.deploy and cal.threshold is not None:
                gate.report_test(
                    pipe, splits, cleaned.answers, cal.threshold, at, figures, progress
                )
                verdict.test_coverage = figures["test"].get("coverage")
                verdict.test_agreement = figures["test"].get("agreement_handled")
            verdicts.append(verdict)
    return verdicts, info


def costs(path: Path) -> tuple[int, int, float]:
    """(lines, lines with a numeric cost_usd, their sum) of a JSONL trace file."""
    lines = priced = 0
    total = 0.0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            lines += 1
            try:
                value = json.loads(line).get("cost_usd")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                priced += 1
                total += float(value)
    return lines, priced, total


def savings(verdicts: list[Verdict], calls: int, priced: int, cost: float) -> None:
    """Calls avoided at each certified coverage, and dollars at the mean priced call."""
    for v in verdicts:
        v.calls_avoided = round(v.coverage * calls)
        v.usd_saved = v.calls_avoided * cost / priced if priced else None


def render(
    verdicts: list[Verdict], info: dict[str, Any], source: str, calls: int, priced: int, cost: float
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    data = info.get("data") or {}
    console.print(
        Text(
            f"tracer scan {source}: {calls} calls, {data.get('n_used', 0)} distinct usable traces, "
            f"{info.get('labels', '?')} labels; embedder {info['embedder']}; "
            f"{info.get('model', 'no model')} (chosen at α {info['chosen_at']}); confidence "
            f"{info['confidence']} (δ {info['delta']:.3g}: a first fit's share); minimum "
            f"coverage {info['min_coverage']}"
        )
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in (
        "α",
        "verdict",
        "coverage",
        "agreement (bound)",
        "test cov/agr",
        "calls",
        "$ saved",
    ):
        table.add_column(name, justify="left" if name == "verdict" else "right")

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def usd(x: float | None) -> str:
        return "-" if x is None else f"${x:,.2f}" if x >= 1 else f"${x:.4f}"

    for v in verdicts:
        table.add_row(
            f"{v.alpha:.2f}",
            "deploy" if v.deploy else "refuse",
            f(v.coverage),
            f"{f(v.agreement)} ({f(v.lower_bound)})",
            f"{f(v.test_coverage)}/{f(v.test_agreement)}",
            f"{v.calls_avoided}/{calls}",
            usd(v.usd_saved),
        )
    console.print(table)
    for v in verdicts:
        if not v.deploy:
            console.print(Text(f"α {v.alpha:.2f}: refused ({v.code}): {v.reason}"))
    notes = "coverage: the share of calls answered locally, certified with agreement at its "
    notes += "lower bound on the calibration split; test: the held-out split, only reported; "
    notes += "calls avoided count before audits (at least tasks[].audit_rate of handled calls "
    notes += "still go to the teacher)"
    if priced:
        notes += f"; dollars at the mean cost_usd of the {priced} priced lines"
    else:
        notes += "; no line carries cost_usd, so no dollars"
    console.print(Text(notes, style="dim"))


def scan_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tracer scan",
        description="What would a surrogate give on these traces? Coverage and savings at "
        "several targets, from one quick fit, with the gate's verdict at each. Nothing is "
        "written or served.",
    )
    p.add_argument("traces", help="trace file (JSONL with input and label; cost_usd counts)")
    p.add_argument(
        "--alphas",
        default=",".join(f"{a:.2f}" for a in ALPHAS),
        help="targets to try (default 0.90,0.95,0.97)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="1 - delta (default 0.95)")
    p.add_argument("--min-coverage", type=float, default=0.2, help="the gate's minimum")
    p.add_argument("--embedder", default="tfidf", help="default tfidf (the default embedder)")
    p.add_argument("--labels", help="closed label set: comma list or a file")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(list(argv))
    from training.cli import _labels_arg, _traces_arg
    from training.traces import TraceFormatError

    path = Path(args.traces)
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        labels = _labels_arg(args.labels)
        opts = FitOptions(
            confidence=args.confidence,
            delta_share=FIRST_FIT_SHARE,
            min_coverage=args.min_coverage,
            embedder=args.embedder,
            labels=tuple(labels) if labels else None,
        )
        jsonl = path.is_file() and path.suffix not in (".csv", ".tsv", ".json")
        calls, priced, cost = costs(path) if jsonl else (0, 0, 0.0)
        verdicts, info = scan(_traces_arg(args.traces), opts, alphas)
    except (OSError, TraceFormatError, ValueError) as exc:
        print(f"tracer scan: error: {exc}", file=sys.stderr)
        return 2
    calls = calls or int((info.get("data") or {}).get("n_read", 0))
    savings(verdicts, calls, priced, cost)
    if args.json:
        out = {
            "file": str(path),
            "calls": calls,
            "priced": priced,
            "cost_usd": cost,
            **info,
            "verdicts": [asdict(v) for v in verdicts],
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        render(verdicts, info, str(path), calls, priced, cost)
    return 0
