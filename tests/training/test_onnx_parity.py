from __future__ import annotations

import numpy as np
import onnxruntime as ort

from proxy.sim.synthetic import separable
from router.text import normalize_text
from training.acceptors import fit_learned, learned_to_onnx
from training.embedders import TfidfEmbedder


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


def test_tfidf_batches_equal_one_text_at_a_time_with_padding_like_characters() -> None:
    """skl2onnx pads short rows with '#': "c#" in the vocabulary must not leak into them."""
    corpus = ["c# or f#? i code in c#", "#39;s news #hashtag", "play some music", "a", "###"]
    texts = [normalize_text(t) for t in corpus * 3]
    emb = TfidfEmbedder(min_df_char=1).fit(texts)
    sess = _session(emb.to_onnx())
    odd = ["play some music", "c#", "it's &#39;fine&#39;", "x", "#", "a much longer text " * 9]
    probe = [normalize_text(t) for t in odd]
    batch = sess.run(None, {"text": np.array(probe, dtype=object).reshape(-1, 1)})[0]
    one_by_one = np.vstack(
        [sess.run(None, {"text": np.array([[t]], dtype=object)})[0] for t in probe]
    )
    ref = emb.transform(probe).toarray()
    assert np.abs(batch - one_by_one).max() < 1e-6
    assert np.abs(batch - ref).max() < 1e-5


def test_router_serves_old_artifacts_with_safe_padding() -> None:
    """An artifact exported with '#' padding scores batches exactly once loaded."""
    from router.pipeline import safe_padding

    texts = [normalize_text(t) for t in ["c# rocks", "play some music", "c# c# c#"] * 3]
    emb = TfidfEmbedder(min_df_char=1).fit(texts)
    model = emb.to_onnx()
    for node in model.graph.node:  # as skl2onnx wrote it before the fix
        for attr in node.attribute:
            if attr.name == "pad_value":
                attr.s = b"#"
    fixed = _session(safe_padding(model))
    probe = np.array([["play some music"], ["c# c# c# and much more text"]], dtype=object)
    got = fixed.run(None, {"text": probe})[0]
    assert np.abs(got - emb.transform(probe.ravel().tolist()).toarray()).max() < 1e-5
