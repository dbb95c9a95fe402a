"""Router: load an artifact and decide, per input, whether the surrogate answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.decision import Decision
from router.errors import ArtifactError
from router.manifest import Manifest, read_manifest, verify_files
from router.pipeline import Pipeline, Scores
from router.tools import ToolCaller


class Router:
    """A loaded, verified artifact. Thread-safe: predict only reads state."""

    def __init__(self, directory: Path, manifest: Manifest, pipeline: Pipeline) -> None:
        if manifest.threshold is None:
            raise ArtifactError("manifest has no finite threshold")
        self.directory = directory
        self.manifest = manifest
        self.threshold = manifest.threshold
        self.labels: list[str] = pipeline.labels
        self.version: str = manifest.version
        self._pipeline = pipeline
        section = manifest.raw.get("tools")
        self.tools: ToolCaller | None = (
            ToolCaller(directory, section) if isinstance(section, dict) else None
        )

    @classmethod
    def load(cls, path: str | Path, *, intra_op_threads: int = 1) -> Router:
        """Verify checksums and load; raise ArtifactError / ArtifactRefused."""
        directory = Path(path)
        manifest = read_manifest(directory)
        verify_files(directory, manifest)
        assert manifest.scoring is not None  # a deployed manifest always has one
        pipeline = Pipeline(directory, manifest.scoring, threads=intra_op_threads)
        return cls(directory, manifest, pipeline)

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    def score(self, texts: Sequence[str]) -> Scores:
        return self._pipeline.score(list(texts))

    def predict(self, text: str) -> Decision:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[Decision]:
        if not texts:
            return []
        s = self._pipeline.score(list(texts))
        runner_up = _runner_up(s.probabilities, s.label_index)
        return [
            self._decide(
                int(s.label_index[i]),
                float(s.accept_score[i]),
                bool(s.ood[i]),
                float(s.ood_similarity[i]),
                int(s.cluster[i]),
                None if runner_up is None else self.labels[int(runner_up[i])],
            )
            for i in range(len(texts))
        ]

    def _decide(
        self, idx: int, score: float, ood: bool, sim: float, cluster: int, second: str | None
    ) -> Decision:
        label = self.labels[idx]
        t = self.threshold
        names = self._pipeline.cluster_names
        where = f"; cluster {cluster} ({names[cluster]})" if 0 <= cluster < len(names) else ""
        known = cluster if cluster >= 0 else None
        if ood:
            reason = (
                f"deferred: out of distribution (similarity {sim:.3f} < "
                f"{self._pipeline.ood_min_similarity:.3f}){where}"
            )
            return Decision(label, "deferred", score, reason, True, known, second)
        if score >= t:
            reason = f"accepted: score {score:.4f} >= threshold {t:.4f}{where}"
            return Decision(label, "handled", score, reason, False, known, second)
        reason = f"deferred: score {score:.4f} below threshold {t:.4f}{where}"
        return Decision(label, "deferred", score, reason, False, known, second)


def _runner_up(probabilities: np.ndarray, top: np.ndarray) -> np.ndarray | None:
    """Each row's second most likely class (None with fewer than two classes)."""
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        return None
    masked = probabilities.copy()
    masked[np.arange(len(masked)), top] = -np.inf
    second: np.ndarray = masked.argmax(axis=1)
    return second
