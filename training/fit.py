"""`fit`: teacher traces -> a served artifact, or a recorded refusal (or failure).

The stages, each a function in its own module:

1. `stages.load_and_clean`: traces in; empty, invalid, duplicate and conflicting ones
   dropped and counted; the teacher's canonical answer per label;
2. `stages.make_splits`: fit / validation / calibration / test, disjoint, stratified,
   seeded; traces a model deferred only train;
3. `stages.embed_splits`: embedders fitted on fit + validation;
4. `selection.select`: every candidate and acceptor, judged by the coverage it
   certifies at alpha on validation;
5. `selection.export`: the winner refitted on fit + validation and written as ONNX;
6. `selection.check_parity`: the exported graph scores as scikit-learn does;
7. `gate.calibrate_threshold`, `gate.gate`: the threshold certified on calibration,
   through the router, or a refusal that says why;
8. `gate.report_test`: the test split, only reported;
9. `gate.heldout_clusters`: regions of input space, shipped for the reports.

The directory is written beside `out_dir` and renamed into place, so a crashed fit
never leaves a valid-looking artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router import Router
from router.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    canonical_json,
    manifest_digest,
    sha256_file,
)
from router.settings import FitOptions
from training import gate, selection, stages, tools
from training.bound import batch_target
from training.progress import Progress
from training.report import build_report, write_report
from training.stages import Refusal, TraceInput

__all__ = ["FitOptions", "FitResult", "fit"]


@dataclass
class FitResult:
    status: str  # "deployed" | "refused" | "failed"
    manifest: dict[str, Any]  # as written to manifest.json
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def deployed(self) -> bool:
        return self.status == "deployed"

    @property
    def typed(self) -> Manifest:
        return Manifest.parse(self.manifest)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    try:
        out["tracer-proxy"] = md.version("tracer-proxy")
    except md.PackageNotFoundError:
        out["tracer-proxy"] = "dev"
    return out


def _finalize_manifest(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    files = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME:
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["files"] = files
    ident = canonical_json({"files": files, "threshold": manifest.get("threshold")})
    manifest["version"] = hashlib.sha256(ident).hexdigest()[:12]
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (directory / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest


def _publish(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp; a crash leaves either the old dir or no dir."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _ship_nothing(tmp: Path, manifest: dict[str, Any], status: str) -> None:
    """A refused or failed fit publishes its manifest (with why) and no model."""
    manifest["status"] = status
    manifest["threshold"] = None
    for p in tmp.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _new_manifest(opts: FitOptions) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": "refused",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": opts.task,
        "alpha": opts.target,
        "delta": round(opts.delta, 12),
        "min_coverage": opts.min_coverage,
        "seed": opts.seed,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("labels", "quiet", "extra")},
        "versions": _versions(),
    }


def fit(
    traces: TraceInput,
    out_dir: str | Path,
    options: FitOptions | None = None,
    **overrides: Any,
) -> FitResult:
    """Fit and gate; write `out_dir` (deployed artifact, or a refusal or failure manifest)."""
    opts = options or FitOptions()
    if overrides:
        opts = FitOptions.from_mapping({**asdict(opts), **overrides})
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    progress = Progress(quiet=opts.quiet)
    manifest = _new_manifest(opts)
    try:
        try:
            _run(traces, tmp, opts, manifest, progress)
            manifest["status"] = "deployed"
        except Refusal as refusal:
            _ship_nothing(tmp, manifest, "refused")
            manifest["refusal"] = {
                "code": refusal.code,
                "reason": refusal.reason,
                **refusal.figures,
            }
        except Exception as exc:  # a bug or bad data: a recorded outcome, not a traceback
            _ship_nothing(tmp, manifest, "failed")
            manifest["refusal"] = {"code": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            progress.log(f"fit failed: {type(exc).__name__}: {exc}")
        manifest["timings"] = progress.timings
        manifest["fit_seconds"] = round(progress.elapsed(), 3)
        manifest = _finalize_manifest(manifest, tmp)
        if manifest["status"] == "deployed":
            Router.load(tmp)  # what we publish must load and verify
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if opts.report:
        with progress.stage("report"):
            try:
                write_report(build_report(out_dir, seed=opts.seed), out_dir)
            except Exception as exc:  # the model stands; only its explanation is missing
                progress.log(f"report failed: {exc}")
    progress.summary(manifest)
    return FitResult(manifest["status"], manifest, out_dir, progress.timings)


def _run(
    traces_in: TraceInput,
    tmp: Path,
    opts: FitOptions,
    manifest: dict[str, Any],
    progress: Progress,
) -> None:
    # What is certified: alpha itself, or a stricter rate that keeps a batch of
    # `horizon` handled inputs at alpha (training/bound.py).
    alpha, delta = batch_target(opts.target, opts.delta, opts.horizon)
    if opts.kind == "tools":  # names and whole calls: two budgets, each half of delta
        delta /= 2
    manifest["certified"] = {"alpha": alpha, "delta": delta, "horizon": opts.horizon}
    manifest["delta_spent"] = 0.0  # until the calibration split is tested
    cleaned = stages.load_and_clean(traces_in, opts, manifest, progress)
    manifest["answers"] = cleaned.answers
    splits = stages.make_splits(cleaned, opts, manifest, progress)
    if len(splits.index["calibration"]) < gate.min_testable(alpha, delta):
        n = len(splits.index["calibration"])
        raise Refusal(
            "too_few_calibration",
            f"calibration split has {n} traces; a bound at alpha={alpha}, "
            f"delta={delta:.3g} needs at least {gate.min_testable(alpha, delta)}",
        )
    feats = stages.embed_splits(splits, opts, manifest, progress)
    chosen = selection.select(feats, opts, alpha, delta, progress)
    if not any(r["coverage"] > 0 for r in chosen.rows):
        # No bound reaches alpha even on validation: testing calibration would spend this
        # fit's share of delta on a refusal that validation (independent of it) foretells.
        raise Refusal(
            "nothing_to_certify",
            f"no candidate's bound reaches alpha={opts.target} at any coverage on the validation "
            f"split ({len(feats.y_val)} traces): more traces are needed; the calibration "
            "split was not tested, so this fit spent none of delta",
        )
    manifest["delta_spent"] = round(opts.delta / (2 if opts.kind == "tools" else 1), 12)
    selection.export(chosen, feats, opts, tmp, manifest, progress)
    pipe = selection.check_parity(chosen, feats, splits, tmp, manifest, progress)
    cal = gate.calibrate_threshold(
        pipe, splits, cleaned.answers, chosen.validation_coverage(), alpha, delta, opts,
        manifest, progress,
    )  # fmt: skip
    gate.gate(cal, opts)
    assert cal.threshold is not None
    manifest["threshold"] = cal.threshold
    gate.report_test(pipe, splits, cleaned.answers, cal.threshold, opts, manifest, progress)
    if opts.kind == "tools":
        honest_names = ([feats.labels[i] for i in chosen.val_labels], chosen.val_scores)
        tools.fit_tools(
            splits, cleaned.arguments_only, pipe, cal.threshold, honest_names, opts, tmp,
            manifest, progress,
        )  # fmt: skip
    gate.heldout_clusters(feats, splits, tmp, opts, manifest, progress)
