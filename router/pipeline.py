"""Scoring pipeline of an artifact: embed, classify, OOD check, acceptor.

`Pipeline` needs no threshold, so the trainer can score calibration data
through exactly the code that will serve; `Router` adds the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from router.acceptor import ACCEPTOR_FEATURES, acceptor_features, simple_score
from router.encoder import SentenceEncoder
from router.errors import ArtifactError
from router.text import normalize_text


@dataclass(frozen=True)
class Scores:
    """Per-input scores for a batch."""

    label_index: np.ndarray  # [N] int
    probabilities: np.ndarray  # [N, K]
    ood_similarity: np.ndarray  # [N]
    ood: np.ndarray  # [N] bool
    accept_score: np.ndarray  # [N] float
    cluster: np.ndarray  # [N] int, -1 when the artifact ships no clusters


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"cannot load ONNX model {path.name}: {exc}") from exc


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ArtifactError(f"manifest {where} lacks {key!r}")
    return section[key]


class Pipeline:
    """Loaded ONNX sessions of one artifact (files must be verified first)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], *, threads: int = 1) -> None:
        self.directory = directory
        self.labels: list[str] = list(_require(manifest, "labels", "root"))
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ArtifactError("manifest label list is empty or has duplicates")
        embedder = _require(manifest, "embedder", "root")
        self._parts: list[tuple[str, Any, float]] = []
        for part in _require(embedder, "parts", "embedder"):
            kind = _require(part, "kind", "embedder part")
            if kind == "tfidf":
                sess = _session(directory / part["file"], threads)
                self._parts.append(("tfidf", sess, float(part.get("weight", 1.0))))
            elif kind == "encoder":
                enc = SentenceEncoder(
                    directory / part["file"],
                    directory / part["tokenizer"],
                    max_length=int(part.get("max_length", 128)),
                    intra_op_threads=threads,
                )
                self._parts.append(("encoder", enc, float(part.get("weight", 1.0))))
            else:
                raise ArtifactError(f"unknown embedder kind {kind!r}")
        self.feature_dim = int(_require(embedder, "dim", "embedder"))
        clf = _require(manifest, "classifier", "root")
        self._clf = _session(directory / _require(clf, "file", "classifier"), threads)
        self._clf_input = self._clf.get_inputs()[0].name
        self._clf_output = str(clf.get("output", "probabilities"))
        ood = manifest.get("ood")
        self._ood_output = str(ood.get("output", "similarity")) if ood else None
        self.ood_min_similarity = float(ood["min_similarity"]) if ood else float("-inf")
        self._outputs = [self._clf_output] + ([self._ood_output] if self._ood_output else [])
        acc = _require(manifest, "acceptor", "root")
        self.acceptor_kind = str(_require(acc, "kind", "acceptor"))
        self._acc = None
        if self.acceptor_kind == "learned":
            self._acc = _session(directory / _require(acc, "file", "acceptor"), threads)
            self._acc_output = str(acc.get("output", "probabilities"))
            if list(acc.get("features", ACCEPTOR_FEATURES)) != list(ACCEPTOR_FEATURES):
                raise ArtifactError("learned acceptor was built for other features")
        elif self.acceptor_kind not in {"max_prob", "margin"}:
            raise ArtifactError(f"unknown acceptor kind {self.acceptor_kind!r}")
        clusters = manifest.get("clusters")
        self._clusters = None
        self.cluster_names: list[str] = []
        if clusters:
            self._clusters = _session(directory / _require(clusters, "file", "clusters"), threads)
            self.cluster_names = [str(n) for n in _require(clusters, "names", "clusters")]
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Run a probe input: dimensions must match the manifest."""
        try:
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
        feats = self.embed(texts)
        outs = self._clf.run(self._outputs, {self._clf_input: feats})
        probs = np.asarray(outs[0], dtype=np.float32).reshape(len(texts), -1)
        if self._ood_output is not None:
            sim = np.asarray(outs[1], dtype=np.float32).reshape(len(texts))
        else:
            sim = np.ones(len(texts), dtype=np.float32)
        ood = sim < self.ood_min_similarity
        feats_acc = acceptor_features(probs, sim)
        if self._acc is not None:
            out = self._acc.run([self._acc_output], {self._acc.get_inputs()[0].name: feats_acc})
            accept = np.asarray(out[0], dtype=np.float64).reshape(len(texts), -1)[:, -1]
        else:
            accept = simple_score(self.acceptor_kind, feats_acc)
        if self._clusters is not None:
            name = self._clusters.get_inputs()[0].name
            cluster = np.asarray(self._clusters.run(None, {name: feats})[0], dtype=np.int64)
        else:
            cluster = np.full(len(texts), -1, dtype=np.int64)
        return Scores(probs.argmax(axis=1), probs, sim, ood, accept, cluster)


_FIELDS = ("label_index", "probabilities", "ood_similarity", "ood", "accept_score", "cluster")
