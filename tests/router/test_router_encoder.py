from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from proxy.sim.synthetic import separable
from router import Router
from router.encoder import SentenceEncoder
from training.fit import fit

MINILM = Path(__file__).resolve().parents[2].parent / "shared/models/all-MiniLM-L6-v2-onnx-int8"
pytestmark = pytest.mark.skipif(
    not (MINILM / "model.onnx").is_file(), reason=f"MiniLM encoder absent at {MINILM}"
)


def test_encoder_pools_normalises_and_ignores_padding() -> None:
    enc = SentenceEncoder(MINILM / "model.onnx", MINILM / "tokenizer.json")
    texts = ["where is my card", "a much longer sentence about exchange rates and fees abroad"]
    batch = enc.encode(texts)
    assert batch.shape == (2, 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.vstack([enc.encode([t]) for t in texts])
    assert np.abs(batch - single).max() < 1e-4  # padding to the longest changes nothing
    sim = batch @ enc.encode(["when will my card arrive"])[0]
    assert sim[0] > sim[1]


def test_fit_with_encoder_and_joined(tmp_path: Path) -> None:
    data = separable(100, seed=2)
    for spec in (f"tfidf+{MINILM}",):
        out = tmp_path / ("joined" if "+" in spec else "encoder")
        result = fit(data, out, quiet=True, embedder=spec, candidates=["logreg"], min_coverage=0)
        m = result.manifest
        assert m["parity"]["label_agreement"] == 1.0
        kinds = [p["kind"] for p in m["embedder"]["parts"]]
        assert kinds == ["tfidf", "encoder"]
        assert "encoder.onnx" in m["files"] and "tokenizer.json" in m["files"]
        if result.status == "deployed":
            router = Router.load(out)
            assert router.predict("my card has not arrived yet").label in router.labels
