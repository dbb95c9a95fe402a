from __future__ import annotations

import numpy as np
import onnxruntime as ort

from router.text import normalize_text
from training.acceptors import fit_learned, learned_to_onnx
from training.embedders import TfidfEmbedder
from training.synthetic import separable


def _session(model: object) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def test_tfidf_onnx_matches_sklearn_including_odd_text() -> None:
    texts = [normalize_text(t) for t, _ in separable(30)]
    odd = [
        "Café au lait — naïve résumé?",
        "card!!! arrived??? no...",
        "tabs\tand\nnewlines   everywhere",
        "émoji 🙂 and ümlauts, ß",
        "x",
        "unknownwordsonly qwertyuiop",
    ]
    emb = TfidfEmbedder(min_df_char=1).fit(texts + [normalize_text(t) for t in odd[:2]])
    sess = _session(emb.to_onnx())
    probe = texts[:50] + [normalize_text(t) for t in odd]
    got = sess.run(None, {"text": np.array(probe, dtype=object).reshape(-1, 1)})[0]
    ref = emb.transform(probe).toarray()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5


def test_learned_acceptor_onnx_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    feats = rng.random((400, 4)).astype(np.float32)
    correct = rng.random(400) < feats[:, 0]
    model = fit_learned(feats, correct)
    assert model is not None
    sess = _session(learned_to_onnx(model))
    got = sess.run(["probabilities"], {"acceptor_features": feats})[0][:, 1]
    assert np.abs(got - model.predict_proba(feats)[:, 1]).max() < 1e-5
