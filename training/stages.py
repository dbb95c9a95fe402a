"""The data stages of a fit: traces in, cleaned; disjoint splits; embedded features.

Each stage is a function from what the stages before it made to a small record,
and writes what it decided into the manifest, so a reader can follow a fit top to
bottom in `training/fit.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.settings import FitOptions
from router.text import normalize_text
from router.traces import ARGUMENTS_ONLY, Trace, read_traces
from training.answers import canonical_answers
from training.embedders import Embedder, EncoderEmbedder, TfidfEmbedder, embed, parse_embedder_spec
from training.progress import Progress
from training.splits import stratified_split
from training.traces import clean_traces

Matrix = Any  # a scipy CSR matrix or a dense float32 array
TraceInput = Sequence[Trace] | Sequence[tuple[str, str]] | Sequence[dict[str, Any]] | str | Path


class Refusal(Exception):
    """The gate's answer is no: a result with a reason and the best figures reached."""

    def __init__(self, code: str, reason: str, **figures: Any) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.figures = figures


def as_traces(traces: TraceInput) -> list[Trace]:
    if isinstance(traces, str | Path):
        return read_traces(traces)
    out = []
    for t in traces:
        if isinstance(t, Trace):
            out.append(t)
        elif isinstance(t, dict):
            out.append(
                Trace(t["input"], t["label"], t.get("source") or "teacher", t.get("raw_output"))
            )
        else:
            out.append(Trace(t[0], t[1]))
    return out


@dataclass
class Cleaned:
    traces: list[Trace]  # one per distinct input, labels normalised
    answers: dict[str, str]  # label -> the teacher's most frequent raw answer
    arguments_only: list[Trace]  # narrowed tool calls: they teach arguments, not names


def load_and_clean(
    traces_in: TraceInput, opts: FitOptions, manifest: dict[str, Any], progress: Progress
) -> Cleaned:
    with progress.stage("load and clean traces"):
        everything = as_traces(traces_in)
        raw = [t for t in everything if t.source != ARGUMENTS_ONLY]
        traces, stats = clean_traces(raw, opts.labels)
        manifest["data"] = stats.as_dict()
        progress.log(
            f"{stats.n_read} read, {stats.n_used} used: {stats.empty_input} empty, "
            f"{stats.invalid_label} invalid label, {stats.duplicates} duplicates, "
            f"{stats.conflicting_dropped} conflicting"
        )
    labels = sorted({t.label for t in traces})
    if len(traces) < opts.min_traces or len(labels) < 2:
        raise Refusal(
            "too_few_traces",
            f"{len(traces)} usable traces with {len(labels)} labels; need at least "
            f"{opts.min_traces} traces and 2 labels",
        )
    narrowed = [t for t in everything if t.source == ARGUMENTS_ONLY]
    if opts.kind == "tools":  # a tool task's answers are calls, rendered by the router
        return Cleaned(traces, {label: label for label in labels}, narrowed)
    kept = set(labels)
    answers = canonical_answers([t for t in raw if t.label.strip() in kept])
    return Cleaned(traces, {label: answers.get(label, label) for label in labels}, narrowed)


@dataclass
class Splits:
    traces: list[Trace]
    texts: list[str]  # normalised, as the embedders see them
    raw_texts: list[str]
    y_str: list[str]
    index: dict[str, np.ndarray]  # split name -> trace indices

    def texts_of(self, split: str, raw: bool = False) -> list[str]:
        source = self.raw_texts if raw else self.texts
        return [source[i] for i in self.index[split]]

    def traces_of(self, split: str) -> list[Trace]:
        return [self.traces[i] for i in self.index[split]]


def shares_of_sampled(
    fractions: dict[str, float], n_sampled: int, n_deferred: int
) -> dict[str, float]:
    """Split shares for the sampled traces, given that deferred ones can only train.

    Deferred traces count towards the fit split's share of all traces; what they
    free of the sampled traces goes to calibration, where sample size is coverage.
    """
    if n_deferred == 0 or n_sampled == 0:
        return fractions
    wanted = fractions["fit"] * (n_sampled + n_deferred)
    fit_share = min(fractions["fit"], max(0.0, wanted - n_deferred) / n_sampled)
    return {
        **fractions,
        "fit": fit_share,
        "calibration": fractions["calibration"] + fractions["fit"] - fit_share,
    }


def make_splits(
    cleaned: Cleaned, opts: FitOptions, manifest: dict[str, Any], progress: Progress
) -> Splits:
    """Disjoint, stratified, seeded splits; only sampled traces may judge a model.

    The traces a served model deferred are its hard cases: they train (fit split)
    but never calibrate or test, which would skew the certificate.
    """
    traces = cleaned.traces
    with progress.stage("split"):
        y_str = [t.label for t in traces]
        fractions = {
            "fit": 1.0 - opts.test_size - opts.calibration_size - opts.validation_size,
            "validation": opts.validation_size,
            "calibration": opts.calibration_size,
            "test": opts.test_size,
        }
        sampled = np.array([i for i, t in enumerate(traces) if t.representative], dtype=np.int64)
        deferred = np.array([i for i, t in enumerate(traces) if not t.representative], np.int64)
        fractions = shares_of_sampled(fractions, len(sampled), len(deferred))
        index = {
            name: sampled[idx]
            for name, idx in stratified_split(
                [y_str[i] for i in sampled], fractions, opts.seed
            ).items()
        }
        index["fit"] = np.sort(np.concatenate([index["fit"], deferred]))
        manifest["splits"] = {k: len(v) for k, v in index.items()}
        manifest["data"]["representative"] = len(sampled)
        manifest["data"]["deferred_fit_only"] = len(deferred)
        progress.log(
            ", ".join(f"{k} {len(v)}" for k, v in index.items())
            + (f" (fit includes {len(deferred)} deferred traces)" if len(deferred) else "")
        )
    return Splits(
        traces, [normalize_text(t.input) for t in traces], [t.input for t in traces], y_str, index
    )


@dataclass
class Features:
    parts: list[Embedder]
    embedder_id: str
    dim: int
    labels: list[str]  # the classes, sorted
    y: np.ndarray  # class index of every trace (-1: a label the training splits lack)
    x_fit: Matrix
    x_val: Matrix
    y_fit: np.ndarray
    y_val: np.ndarray
    ood_block: tuple[int, int] | None  # the encoder's columns, when joined with TF-IDF

    def block(self, x: Matrix) -> Matrix:
        """The columns the out-of-distribution check looks at."""
        return x if self.ood_block is None else x[:, self.ood_block[0] : self.ood_block[1]]


def embed_splits(
    splits: Splits, opts: FitOptions, manifest: dict[str, Any], progress: Progress
) -> Features:
    train_idx = (
        np.concatenate([splits.index["fit"], splits.index["validation"]])
        if opts.refit
        else splits.index["fit"]
    )
    labels = sorted({splits.y_str[i] for i in train_idx})
    if len(labels) < 2:
        raise Refusal("too_few_labels", "fewer than 2 labels in the training splits")
    lab_index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([lab_index.get(s, -1) for s in splits.y_str])
    manifest["labels"] = labels
    with progress.stage("embed"):
        parts = parse_embedder_spec(opts.embedder, encoder_weight=opts.encoder_weight)
        fit_texts, val_texts = splits.texts_of("fit"), splits.texts_of("validation")
        for p in parts:
            p.fit(fit_texts + val_texts)  # unsupervised; calibration and test never seen
        x_fit = embed(parts, fit_texts)
        x_val = embed(parts, val_texts)
        dim = x_fit.shape[1]
        emb_id = "+".join(
            "tfidf" if isinstance(p, TfidfEmbedder) else f"encoder:{p.folder.name}" for p in parts
        )
        progress.log(f"embedder {emb_id}: {dim} features")
    # OOD check on the encoder block when there is one: sentence embeddings separate
    # unseen topics better than TF-IDF (CLINC150 out-of-scope queries).
    ood_block = None
    if len(parts) > 1 and any(isinstance(p, EncoderEmbedder) for p in parts):
        start = sum(p.dim for p in parts if isinstance(p, TfidfEmbedder))
        ood_block = (start, dim)
    return Features(
        parts, emb_id, dim, labels, y, x_fit, x_val,
        y[splits.index["fit"]], y[splits.index["validation"]], ood_block,
    )  # fmt: skip
