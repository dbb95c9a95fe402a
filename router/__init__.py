"""Serving-time inference: load an artifact (ONNX + manifest) and route inputs.

    from router import Router, Decision, ArtifactError, ArtifactRefused
    r = Router.load("artifacts/banking")
    d = r.predict("where is my card?")   # Decision(label, decision, accept_score, reason, ood)

Imports only numpy, onnxruntime, tokenizers and the standard library.
"""

from router.decision import Decision
from router.errors import ArtifactError, ArtifactRefused
from router.router import Router

__all__ = ["ArtifactError", "ArtifactRefused", "Decision", "Router"]
