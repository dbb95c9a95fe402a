"""The artifact manifest: integrity checks, and a typed view that every reader shares.

`manifest.json` is written by the trainer as plain JSON and checksummed whole. Readers
(the router, the proxy, the reports, the CLI) never index the dict themselves: they
parse it once into `Manifest`, whose fields say what each section means and which
are optional, so a missing or mistyped key is one clear `ArtifactError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from router.errors import ArtifactError, ArtifactRefused

MANIFEST_NAME = "manifest.json"
FORMAT = "tracer-artifact"
FORMAT_VERSION = 1

Status = Literal["deployed", "refused", "failed"]
STATUSES: tuple[Status, ...] = ("deployed", "refused", "failed")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest without its own `manifest_sha256` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


# -- reading fields with their types checked ---------------------------------------------
def _get(section: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in section:
        raise ArtifactError(f"manifest {where} lacks {key!r}")
    value = section[key]
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ArtifactError(f"manifest {where}.{key} has the wrong type")
    return value


def _opt(section: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = section.get(key, default)
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _number(section: Mapping[str, Any], key: str) -> float | None:
    value = section.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ArtifactError(f"manifest {key} is not an object")
    return cast(Mapping[str, Any], value)


# -- the sections ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedderPart:
    kind: Literal["tfidf", "encoder"]
    file: str
    weight: float
    tokenizer: str | None = None
    max_length: int = 128


@dataclass(frozen=True)
class Embedder:
    id: str
    dim: int
    parts: tuple[EmbedderPart, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Embedder:
        parts = []
        for part in _get(raw, "parts", list, "embedder"):
            if not isinstance(part, dict):
                raise ArtifactError("manifest embedder part is not an object")
            kind = _get(part, "kind", str, "embedder part")
            if kind not in ("tfidf", "encoder"):
                raise ArtifactError(f"unknown embedder kind {kind!r}")
            parts.append(
                EmbedderPart(
                    kind=kind,
                    file=_get(part, "file", str, "embedder part"),
                    weight=float(_opt(part, "weight", (int, float), 1.0)),
                    tokenizer=_get(part, "tokenizer", str, "embedder part")
                    if kind == "encoder"
                    else None,
                    max_length=int(_opt(part, "max_length", int, 128)),
                )
            )
        if not parts:
            raise ArtifactError("manifest embedder has no parts")
        return cls(str(raw.get("id", "")), int(_get(raw, "dim", int, "embedder")), tuple(parts))


@dataclass(frozen=True)
class Scoring:
    """What the router needs to score inputs: the stages and their files."""

    labels: tuple[str, ...]
    embedder: Embedder
    classifier_file: str
    classifier_output: str
    acceptor_kind: str
    acceptor_file: str | None
    acceptor_output: str
    acceptor_features: tuple[str, ...] | None
    ood_min_similarity: float | None
    ood_output: str
    cluster_file: str | None
    cluster_names: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Scoring:
        labels = _get(raw, "labels", list, "root")
        if (
            not labels
            or len(set(labels)) != len(labels)
            or not all(isinstance(x, str) for x in labels)
        ):
            raise ArtifactError("manifest label list is empty, has duplicates or non-strings")
        embedder = _section(raw, "embedder")
        clf = _section(raw, "classifier")
        acc = _section(raw, "acceptor")
        if embedder is None or clf is None or acc is None:
            raise ArtifactError("manifest lacks its embedder, classifier or acceptor")
        kind = _get(acc, "kind", str, "acceptor")
        if kind not in ("learned", "max_prob", "margin"):
            raise ArtifactError(f"unknown acceptor kind {kind!r}")
        features = acc.get("features")
        ood = _section(raw, "ood")
        clusters = _section(raw, "clusters")
        return cls(
            labels=tuple(labels),
            embedder=Embedder.parse(embedder),
            classifier_file=_get(clf, "file", str, "classifier"),
            classifier_output=str(_opt(clf, "output", str, "probabilities")),
            acceptor_kind=kind,
            acceptor_file=_get(acc, "file", str, "acceptor") if kind == "learned" else None,
            acceptor_output=str(_opt(acc, "output", str, "probabilities")),
            acceptor_features=tuple(features) if isinstance(features, list) else None,
            ood_min_similarity=None
            if ood is None
            else float(_get(ood, "min_similarity", (int, float), "ood")),
            ood_output=str(_opt(ood or {}, "output", str, "similarity")),
            cluster_file=None if clusters is None else _get(clusters, "file", str, "clusters"),
            cluster_names=tuple(str(n) for n in (clusters or {}).get("names", [])),
        )


@dataclass(frozen=True)
class Calibration:
    """The fixed-sequence test on the calibration split, as the gate ran it."""

    threshold: float | None
    n: int
    coverage: float
    agreement: float | None
    lower_bound: float | None
    ood_share: float = 0.0
    # The accept score below which calibration's least sure inputs lay, and the share of
    # its inputs out of distribution or below it (older artifacts: None, the OOD share).
    low_accept: float | None = None
    unusual_share: float | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Calibration:
        return cls(
            threshold=_number(raw, "threshold"),
            n=int(_opt(raw, "n", int, 0)),
            coverage=_number(raw, "coverage") or 0.0,
            agreement=_number(raw, "agreement"),
            lower_bound=_number(raw, "lower_bound"),
            ood_share=_number(raw, "ood_share") or 0.0,
            low_accept=_number(raw, "low_accept"),
            unusual_share=_number(raw, "unusual_share"),
        )


@dataclass(frozen=True)
class Refusal:
    """Why the gate refused (or the fit failed), with the best figures it reached."""

    code: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Refusal:
        figures = {
            k: float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        return cls(
            str(raw.get("code", "")), str(raw.get("reason") or "no reason recorded"), figures
        )


@dataclass(frozen=True)
class Manifest:
    """One artifact's manifest, typed. `raw` is the JSON as written (and checksummed)."""

    raw: Mapping[str, Any]
    status: Status
    version: str
    task: str | None
    created_at: str | None
    alpha: float | None
    delta: float | None
    threshold: float | None
    calibration: Calibration | None
    refusal: Refusal | None
    scoring: Scoring | None  # None for a refusal or a failure: they ship no model
    answers: dict[str, str]  # label -> the teacher's most frequent raw answer for it
    test: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Manifest:
        status = raw.get("status")
        if status not in STATUSES:
            raise ArtifactError(f"unknown artifact status {status!r}")
        calibration = _section(raw, "calibration")
        refusal = _section(raw, "refusal")
        answers = raw.get("answers") or {}
        if not isinstance(answers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in answers.items()
        ):
            raise ArtifactError("manifest answers must map labels to strings")
        return cls(
            raw=raw,
            status=cast(Status, status),
            version=str(raw.get("version") or str(raw.get("manifest_sha256", ""))[:12]),
            task=raw.get("task") if isinstance(raw.get("task"), str) else None,
            created_at=raw.get("created_at") if isinstance(raw.get("created_at"), str) else None,
            alpha=_number(raw, "alpha"),
            delta=_number(raw, "delta"),
            threshold=_number(raw, "threshold"),
            calibration=None if calibration is None else Calibration.parse(calibration),
            refusal=None if refusal is None else Refusal.parse(refusal),
            scoring=Scoring.parse(raw) if status == "deployed" else None,
            answers=dict(answers),
            test=_section(raw, "test") or {},
        )

    @property
    def deployed(self) -> bool:
        return self.status == "deployed"

    @property
    def output_format(self) -> Literal["text", "json"]:
        """How answers compare: exactly, or as parsed JSON (recorded with the fit's options)."""
        options = self.raw.get("options")
        fmt = options.get("output_format") if isinstance(options, dict) else None
        return "json" if fmt == "json" else "text"

    def answer(self, label: str) -> str:
        """The text a handled request is answered with: the teacher's own words."""
        return self.answers.get(label, label)

    @property
    def certified_coverage(self) -> float:
        return self.calibration.coverage if self.calibration is not None else 0.0


def read_manifest(directory: Path, *, allow_refused: bool = False) -> Manifest:
    """Parse and check `manifest.json`; raise ArtifactRefused for a refusal or a failure."""
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {directory}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"unreadable manifest {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a {FORMAT} manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"manifest format_version {raw.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    if raw.get("manifest_sha256") != manifest_digest(raw):
        raise ArtifactError(f"manifest checksum mismatch in {path}: the manifest was modified")
    manifest = Manifest.parse(raw)
    if not manifest.deployed and not allow_refused:
        reason = manifest.refusal.reason if manifest.refusal else "no reason recorded"
        what = "parity-gate refusal" if manifest.status == "refused" else "failed fit"
        raise ArtifactRefused(f"artifact is a {what}: {reason}", manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Every file listed in the manifest exists and has its recorded sha256."""
    files = manifest.raw.get("files")
    if not isinstance(files, dict):
        raise ArtifactError("manifest lists no files")
    for name, meta in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"manifest lists an unsafe file name {name!r}")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"artifact file missing: {name}")
        actual = sha256_file(path)
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if actual != expected:
            raise ArtifactError(f"checksum mismatch for {name}: expected {expected}, got {actual}")
