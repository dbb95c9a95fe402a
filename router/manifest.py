"""The artifact manifest: reading, checksums and integrity checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from router.errors import ArtifactError, ArtifactRefused

MANIFEST_NAME = "manifest.json"
FORMAT = "tracer-artifact"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own `manifest_sha256` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def read_manifest(directory: Path, *, allow_refused: bool = False) -> dict[str, Any]:
    """Parse and check `manifest.json`; raise ArtifactRefused for a refusal."""
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"manifest format_version {manifest.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    recorded = manifest.get("manifest_sha256")
    if recorded != manifest_digest(manifest):
        raise ArtifactError(f"manifest checksum mismatch in {path}: the manifest was modified")
    if manifest.get("status") in ("refused", "failed") and not allow_refused:
        reason = manifest.get("refusal", {}).get("reason", "no reason recorded")
        what = "parity-gate refusal" if manifest["status"] == "refused" else "failed fit"
        raise ArtifactRefused(f"artifact is a {what}: {reason}", manifest)
    if manifest.get("status") not in {"deployed", "refused", "failed"}:
        raise ArtifactError(f"unknown artifact status {manifest.get('status')!r}")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file listed in the manifest exists and has its recorded sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError("manifest lists no files")
    for name, meta in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"manifest lists an unsafe file name {name!r}")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"artifact file missing: {name}")
        actual = sha256_file(path)
        if actual != meta.get("sha256"):
            raise ArtifactError(
                f"checksum mismatch for {name}: expected {meta.get('sha256')}, got {actual}"
            )
