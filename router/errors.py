"""Errors raised when an artifact cannot be served."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.manifest import Manifest


class ArtifactError(Exception):
    """The artifact directory is missing, tampered with, or inconsistent."""


class ArtifactRefused(ArtifactError):
    """The artifact is a recorded refusal (or failure) of a fit; `.manifest` says why."""

    def __init__(self, message: str, manifest: Manifest) -> None:
        super().__init__(message)
        self.manifest = manifest
