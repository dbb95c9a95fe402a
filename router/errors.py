"""Errors raised when an artifact cannot be served."""

from __future__ import annotations

from typing import Any


class ArtifactError(Exception):
    """The artifact directory is missing, tampered with, or inconsistent."""


class ArtifactRefused(ArtifactError):
    """The artifact is a recorded refusal of the parity gate; `.manifest` says why."""

    def __init__(self, message: str, manifest: dict[str, Any]) -> None:
        super().__init__(message)
        self.manifest = manifest
