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


def _head_outputs(model: object, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"features": x}), strict=True))


def test_nearest_neighbours_and_their_average_with_others_score_in_onnx_as_in_python() -> None:
    """Dense features (an encoder's) and wide sparse ones (TF-IDF through the SVD), more
    references than the cap, and a k larger than some classes."""
    from training.candidates import LogReg, Reducer
    from training.ensemble import Ensemble, NearestNeighbours
    from training.selection import centroids

    data = separable(60, seed=4)
    labels = sorted({y for _, y in data})
    y = np.array([labels.index(lab) for _, lab in data])
    texts = [normalize_text(t) for t, _ in data]
    emb = TfidfEmbedder(min_df_char=1).fit(texts)
    sparse_x = emb.transform(texts)
    dense_x = np.random.default_rng(0).normal(size=(len(y), 24)).astype(np.float32)
    dense_x[np.arange(len(y)), y] += 3.0
    for x, reducer in ((dense_x, Reducer(24)), (sparse_x, Reducer(sparse_x.shape[1], 16))):
        reducer.fit(x)
        knn = NearestNeighbours(k=7, max_references=len(y) - 20).fit(x, y, len(labels), reducer)
        assert len(knn.references_) == len(y) - 20
        knn.tune(x, y, reducer)
        dim = x.shape[1]
        dense = x.toarray() if hasattr(x, "toarray") else x
        got = _head_outputs(knn.to_onnx(dim, reducer, None), dense.astype(np.float32))
        assert np.abs(got["probabilities"] - knn.predict_proba(x, reducer)).max() < 1e-4
        both = Ensemble(members=[LogReg().fit(x, y, len(labels), reducer), knn])
        cents = centroids(x, y, len(labels))
        got = _head_outputs(both.to_onnx(dim, reducer, cents), dense.astype(np.float32))
        want = (both.members[0].predict_proba(x, reducer) + knn.predict_proba(x, reducer)) / 2
        assert np.abs(got["probabilities"] - want).max() < 1e-4
        assert got["similarity"].shape == (len(y),)
