"""Text normalisation shared by training and serving."""

from __future__ import annotations


def normalize_text(text: str) -> str:
    """Collapse whitespace and lowercase: the form every embedder sees."""
    return " ".join(text.split()).lower()
