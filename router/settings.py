"""Fit settings: the one object that says how to fit a task's surrogate.

`tracer fit` builds it from its flags, the proxy builds it from a task's config, and
the refit worker rebuilds it from the JSON the proxy hands it; the trainer reads it.
It lives here, below both, so that the proxy need not import the training stack to
describe a fit, and a setting added once is settable everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Acceptor = Literal["max_prob", "margin", "learned"]
ACCEPTORS: tuple[Acceptor, ...] = ("max_prob", "margin", "learned")


@dataclass(frozen=True)
class FitOptions:
    target: float = 0.95  # alpha: agreement with the teacher on handled traffic
    confidence: float = 0.95  # 1 - delta, for this fit's certificate
    # The share of delta this fit may spend (the proxy spends delta across a task's
    # refits so the promise holds over its whole life; see training/bound.py).
    delta_share: float = 1.0
    # A tool task's whole calls are certified from a budget of their own, spent only by
    # fits that test them: this fit's share of it (see training/tools.py).
    whole_delta_share: float = 1.0
    min_coverage: float = 0.2  # the gate refuses below this calibrated coverage
    horizon: int = 0  # >0: promise alpha on the next `horizon` handled inputs, not on average
    embedder: str = "tfidf"  # "tfidf" | encoder folder | "tfidf+FOLDER" | "hf:REPO"
    encoder_weight: float = 2.0  # scale of the encoder block when joined with TF-IDF
    output_format: Literal["text", "json"] = "text"  # how answers compare (JSON: parsed)
    kind: Literal["classify", "tools"] = "classify"  # tools: labels are tool choices
    seed: int = 0
    test_size: float = 0.1
    # The bound's slack shrinks with the calibration size; past ~5k training traces the
    # surrogate gains less from a tenth more data than the threshold does from it.
    calibration_size: float = 0.25
    validation_size: float = 0.15
    labels: tuple[str, ...] | None = None  # closed label set; others are dropped
    candidates: tuple[str, ...] | None = None  # None: all
    acceptors: tuple[Acceptor, ...] = ACCEPTORS
    ood_quantile: float = 0.01  # share of in-distribution validation flagged OOD; 0 disables
    refit: bool = True  # retrain the winner on fit + validation
    min_traces: int = 50
    svd_components: int = 128
    task: str | None = None
    quiet: bool = False
    report: bool = True  # write report.html/report.json beside the model
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific (e.g. tool schemas)

    def __post_init__(self) -> None:
        if not (0.0 < self.target < 1.0 and 0.0 < self.confidence < 1.0):
            raise ValueError("target and confidence must lie strictly between 0 and 1")
        if not (0.0 < self.delta_share <= 1.0 and 0.0 < self.whole_delta_share <= 1.0):
            raise ValueError("delta_share and whole_delta_share must lie in (0, 1]")
        if self.test_size + self.calibration_size + self.validation_size >= 1.0:
            raise ValueError("split sizes leave nothing to fit on")
        for name in ("labels", "candidates", "acceptors"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @property
    def delta(self) -> float:
        """What this fit's certificate may be wrong with: its share of 1 - confidence."""
        return (1.0 - self.confidence) * self.delta_share

    @property
    def whole_delta(self) -> float:
        """What a tool task's whole-call certificate may be wrong with, in this fit."""
        return (1.0 - self.confidence) * self.whole_delta_share

    def with_(self, **changes: Any) -> FitOptions:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FitOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fit settings: {', '.join(sorted(unknown))}")
        return cls(**{k: _tuple(v) for k, v in values.items()})

    @classmethod
    def from_json(cls, text: str) -> FitOptions:
        return cls.from_mapping(json.loads(text))


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
