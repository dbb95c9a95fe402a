"""`tracer fit` and `tracer eval` (wired into the `tracer` script by proxy/cli.py).

Also runnable as `python -m training fit ...` / `python -m training eval ...`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REFUSED_EXIT = 3
FAILED_EXIT = 4


def _labels_arg(value: str | None) -> list[str] | None:
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return [line.strip() for line in text.splitlines() if line.strip()]
        return [str(x) for x in data]
    return [s.strip() for s in value.split(",") if s.strip()]


def _traces_arg(value: str) -> Any:
    """A trace JSONL file as it is (its `source` and `raw_output` keys count); any other
    labelled data `tracer eval` and `tracer demo` take (a CSV with `input,label` or
    `text,category` columns, a TSV, CLINC150's JSON, a data set folder) as (input, label)."""
    path = Path(value)
    if path.is_file() and path.suffix not in (".csv", ".tsv", ".json"):
        return value
    if path.suffix == ".csv" and path.is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if {"input", "label"} <= set(reader.fieldnames or ()):
                return [(row["input"] or "", row["label"] or "") for row in reader]
    from training.datasets import load_labelled

    try:
        return load_labelled(path, "train")
    except KeyError as exc:
        raise ValueError(
            f"{path}: no column {exc}; a CSV needs `input,label` (or `text,category`) columns"
        ) from None


def fit_command(argv: Sequence[str]) -> int:
    from router.settings import FitOptions

    defaults = FitOptions()
    p = argparse.ArgumentParser(
        prog="tracer fit",
        description="Fit a parity-gated surrogate on teacher traces, and certify it (or say "
        "why not). Nothing is served: `tracer eval` tries the artifact, a proxy serves it.",
    )
    p.add_argument(
        "traces",
        help="trace file (JSONL with 'input' and 'label'), or labelled data as tracer eval "
        "takes it: a CSV (input,label or text,category), a TSV, a data set folder",
    )
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument(
        "--target",
        type=float,
        default=defaults.target,
        help="alpha: agreement with the teacher on handled inputs (default 0.95)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=defaults.confidence,
        help="1 - delta: confidence of the bound (default 0.95)",
    )
    p.add_argument(
        "--min-coverage",
        type=float,
        default=defaults.min_coverage,
        help="refuse below this calibrated coverage (default 0.2)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=defaults.horizon,
        help="promise the target on the next N handled inputs rather than on average "
        "(default 0: on average); costs coverage",
    )
    p.add_argument(
        "--embedder",
        default=defaults.embedder,
        help="tfidf | PATH to an encoder folder | hf:OWNER/NAME (Hugging Face hub) | "
        "tfidf+PATH or tfidf+hf:OWNER/NAME (default tfidf)",
    )
    p.add_argument(
        "--encoder-weight",
        type=float,
        default=defaults.encoder_weight,
        help="scale of the encoder features when joined with TF-IDF",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="closed label set: comma list, or a file (JSON list or one a line)",
    )
    p.add_argument(
        "--candidates",
        default=None,
        help=(
            "comma list among linear_svm,logreg,mlp,extra_trees,knn,ensemble "
            "(default all; ensemble averages the listed ones but extra_trees)"
        ),
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--test-size", type=float, default=defaults.test_size)
    p.add_argument("--calibration-size", type=float, default=defaults.calibration_size)
    p.add_argument("--validation-size", type=float, default=defaults.validation_size)
    p.add_argument(
        "--ood-quantile",
        type=float,
        default=defaults.ood_quantile,
        help="share of in-distribution validation inputs flagged OOD (0: no OOD check)",
    )
    p.add_argument(
        "--no-refit", action="store_true", help="keep the model trained on the fit split only"
    )
    p.add_argument("--task", default=None, help="task name recorded in the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(list(argv))

    from training.fit import fit
    from training.traces import TraceFormatError

    try:
        opts = FitOptions(
            target=args.target,
            confidence=args.confidence,
            min_coverage=args.min_coverage,
            horizon=args.horizon,
            embedder=args.embedder,
            encoder_weight=args.encoder_weight,
            seed=args.seed,
            test_size=args.test_size,
            calibration_size=args.calibration_size,
            validation_size=args.validation_size,
            labels=tuple(labels) if (labels := _labels_arg(args.labels)) else None,
            candidates=tuple(args.candidates.split(",")) if args.candidates else None,
            ood_quantile=args.ood_quantile,
            refit=not args.no_refit,
            task=args.task,
            quiet=args.quiet,
        )
        result = fit(_traces_arg(args.traces), Path(args.out), opts)
    except (OSError, TraceFormatError, ValueError) as exc:
        print(f"tracer fit: error: {exc}", file=sys.stderr)
        return 2
    if result.status in ("refused", "failed"):
        from training.advice import advice_for_manifest

        print(
            f"tracer fit: {result.status}: {result.manifest['refusal']['reason']}",
            file=sys.stderr,
        )
        advice = advice_for_manifest(result.manifest, closed_labels=opts.labels is not None)
        print(f"tracer fit: {advice}", file=sys.stderr)
        return REFUSED_EXIT if result.status == "refused" else FAILED_EXIT
    if not args.quiet:
        print(
            f"tracer fit: certified; the artifact is in {args.out} (nothing is served: "
            "`tracer eval` tries it on labelled data)",
            file=sys.stderr,
        )
    return 0


def eval_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tracer eval",
        description="Evaluate an artifact on labelled data; prints a JSON object.",
    )
    p.add_argument("artifact", help="artifact directory written by tracer fit")
    p.add_argument("labelled", help="labelled data: trace JSONL, or a benchmark file/folder")
    p.add_argument("--split", default="test", help="split for benchmark folders (default test)")
    args = p.parse_args(list(argv))

    from router import ArtifactError, ArtifactRefused, Router
    from training.datasets import load_labelled
    from training.evaluate import evaluate
    from training.traces import TraceFormatError

    try:
        router = Router.load(args.artifact)
    except ArtifactRefused as exc:
        refusal = exc.manifest.raw.get("refusal", {})
        print(json.dumps({"status": "refused", **refusal}, indent=2))
        print(f"tracer eval: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    except ArtifactError as exc:
        print(f"tracer eval: error: {exc}", file=sys.stderr)
        return 2
    try:
        pairs = load_labelled(args.labelled, args.split)
    except (OSError, TraceFormatError, ValueError) as exc:
        print(f"tracer eval: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "status": "deployed",
        "version": router.version,
        "threshold": router.threshold,
        "alpha": router.manifest.alpha,
        **evaluate(router, pairs),
    }
    print(json.dumps(result, indent=2))
    return 0
