"""Text normalisation shared by training and serving."""

from __future__ import annotations

# The embedders read at most this many characters of an input. Scoring costs time in
# proportion to the text, and a prediction may run on the event loop, so its cost must
# stay bounded whatever a client sends; the trace still keeps the whole input.
MAX_INPUT_CHARS = 4096

# The exported TF-IDF graph pads the shorter rows of a batch with this character. It
# must never form an n-gram that a vocabulary holds, so `normalize_text` removes it from
# every text that is fitted or scored (skl2onnx's own pad, '#', is an ordinary character).
PAD_CHAR = "\ue000"


def normalize_text(text: str) -> str:
    """Collapse whitespace and lowercase: the form every embedder sees."""
    text = " ".join(text[:MAX_INPUT_CHARS].split()).lower()
    return text.replace(PAD_CHAR, "") if PAD_CHAR in text else text
