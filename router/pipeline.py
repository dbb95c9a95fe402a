"""Scoring pipeline of an artifact: embed, classify, OOD check, acceptor, cluster.

`Pipeline` needs no threshold, so the trainer can score calibration data
through exactly the code that will serve; `Router` adds the threshold. The
stages after the embedder (and a TF-IDF embedder too) run as one stitched
ONNX graph (`router.fused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from router.acceptor import ACCEPTOR_FEATURES
from router.encoder import SentenceEncoder
from router.errors import ArtifactError
from router.fused import OUTPUTS, stitch
from router.manifest import Scoring
from router.text import PAD_CHAR, normalize_text


@dataclass(frozen=True)
class Scores:
    """Per-input scores for a batch."""

    label_index: np.ndarray  # [N] int
    probabilities: np.ndarray  # [N, K]
    ood_similarity: np.ndarray  # [N]
    ood: np.ndarray  # [N] bool
    accept_score: np.ndarray  # [N] float
    cluster: np.ndarray  # [N] int, -1 when the artifact ships no clusters


def _session(model: Path | bytes, threads: int, name: str = "") -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        what = model.name if isinstance(model, Path) else name
        raise ArtifactError(f"cannot load ONNX model {what}: {exc}") from exc


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's decode errors have no common base
        raise ArtifactError(f"cannot read ONNX model {path.name}: {exc}") from exc


def safe_padding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pad batched TF-IDF rows with `PAD_CHAR`, which no normalised text contains.

    skl2onnx pads with '#': a row shorter than the batch's longest then picks up
    n-grams such as "c#" that it does not have, so a batch scored differently from
    one text at a time. Patched at load too, so artifacts fitted before the fix serve
    exactly.
    """
    for node in model.graph.node:
        if node.op_type == "Tokenizer":
            for attr in node.attribute:
                if attr.name == "pad_value":
                    attr.s = PAD_CHAR.encode()
    return model


def _rename_output(model: onnx.ModelProto, name: str, to: str) -> None:
    """Give a stage's output the name the stitched graph expects."""
    if name == to:
        return
    if name not in {o.name for o in model.graph.output}:
        raise ArtifactError(f"model has no output {name!r}")
    model.graph.node.append(onnx.helper.make_node("Identity", [name], [to]))
    for out in model.graph.output:
        if out.name == name:
            out.name = to


class Pipeline:
    """Loaded ONNX sessions of one artifact (files must be verified first)."""

    def __init__(self, directory: Path, scoring: Scoring, *, threads: int = 1) -> None:
        self.directory = directory
        self.labels: list[str] = list(scoring.labels)
        self._parts: list[tuple[str, Any, float]] = []
        text_model: onnx.ModelProto | None = None
        for part in scoring.embedder.parts:
            if part.kind == "tfidf":
                text_file = directory / part.file
                text_model = safe_padding(_load(text_file))
                sess = _session(text_model.SerializeToString(), threads, text_file.name)
                self._parts.append(("tfidf", sess, part.weight))
            else:
                assert part.tokenizer is not None  # Scoring.parse requires it for an encoder
                enc = SentenceEncoder(
                    directory / part.file,
                    directory / part.tokenizer,
                    max_length=part.max_length,
                    intra_op_threads=threads,
                )
                self._parts.append(("encoder", enc, part.weight))
        self.feature_dim = scoring.embedder.dim
        head = _load(directory / scoring.classifier_file)
        ood = scoring.ood_min_similarity
        self.ood_min_similarity = float("-inf") if ood is None else ood
        _rename_output(head, scoring.classifier_output, "probabilities")
        if ood is not None:
            _rename_output(head, scoring.ood_output, "similarity")
        else:  # no OOD check: the acceptor was fitted on a similarity of 1
            kept = [o for o in head.graph.output if o.name != "similarity"]
            del head.graph.output[:]
            head.graph.output.extend(kept)
        self.acceptor_kind = scoring.acceptor_kind
        acceptor = None
        if scoring.acceptor_file is not None:
            acceptor = _load(directory / scoring.acceptor_file)
            if list(scoring.acceptor_features or ACCEPTOR_FEATURES) != list(ACCEPTOR_FEATURES):
                raise ArtifactError("learned acceptor was built for other features")
        cluster_model = None
        self.cluster_names: list[str] = list(scoring.cluster_names)
        if scoring.cluster_file is not None:
            cluster_model = _load(directory / scoring.cluster_file)
        # A lone TF-IDF part joins the graph: text in, scores out, one call a batch.
        kind, _, weight = self._parts[0]
        self._text_in = len(self._parts) == 1 and kind == "tfidf" and weight == 1.0
        if not self._text_in:
            text_model = None
        try:
            graph = stitch(
                head,
                len(self.labels),
                self.acceptor_kind,
                text_model=text_model,
                acceptor=acceptor,
                acceptor_output=scoring.acceptor_output,
                clusters=cluster_model,
            )
        except (ValueError, onnx.checker.ValidationError, IndexError) as exc:
            raise ArtifactError(f"artifact stages do not fit together: {exc}") from exc
        self._scorer = _session(graph.SerializeToString(), threads, "scoring graph")
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Run a probe input: dimensions must match the manifest."""
        try:
            self.embed(["probe"])
            scores = self.score(["probe"])
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"artifact does not run: {exc}") from exc
        if scores.probabilities.shape != (1, len(self.labels)):
            raise ArtifactError(
                f"classifier gives {scores.probabilities.shape[1]} classes, "
                f"manifest lists {len(self.labels)} labels"
            )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        norm = [normalize_text(t) for t in texts]
        blocks = []
        for kind, model, weight in self._parts:
            if kind == "tfidf":
                arr = np.array(norm, dtype=object).reshape(-1, 1)
                out = model.run(None, {model.get_inputs()[0].name: arr})[0]
            else:
                out = model.encode(norm)
            out = np.asarray(out, dtype=np.float32)
            blocks.append(out * weight if weight != 1.0 else out)
        feats = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
        if feats.shape[1] != self.feature_dim:
            raise ArtifactError(
                f"embedder gives {feats.shape[1]} features, manifest says {self.feature_dim}"
            )
        return feats

    def score(self, texts: Sequence[str], batch_size: int = 256) -> Scores:
        if len(texts) > batch_size:
            parts = [
                self.score(texts[i : i + batch_size], batch_size)
                for i in range(0, len(texts), batch_size)
            ]
            return Scores(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))
        if self._text_in:
            feed = {"text": np.array([normalize_text(t) for t in texts], dtype=object)}
            feed["text"] = feed["text"].reshape(-1, 1)
        else:
            feed = {"features": self.embed(texts)}
        probs, sim, accept, cluster = self._scorer.run(list(OUTPUTS), feed)
        sim = np.asarray(sim, dtype=np.float32).reshape(len(texts))
        return Scores(
            label_index=probs.argmax(axis=1),
            probabilities=np.asarray(probs, dtype=np.float32).reshape(len(texts), -1),
            ood_similarity=sim,
            ood=sim < self.ood_min_similarity,
            accept_score=np.asarray(accept, dtype=np.float64).reshape(len(texts)),
            cluster=np.asarray(cluster, dtype=np.int64).reshape(len(texts)),
        )


_FIELDS = ("label_index", "probabilities", "ood_similarity", "ood", "accept_score", "cluster")
