"""The stitched scoring graph computes what the artifact's stages compute one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from proxy.sim.synthetic import separable
from router import Router
from router.acceptor import acceptor_features, simple_score
from router.fused import OUTPUTS, stitch
from training.fit import fit
from training.onnx_graph import build_head

TEXTS = [
    "my card has not arrived in the mail yet please help",
    "how do i change my pin",
    "zzz qqq xxyy 42",
    "",
    "   ",
    "I lost my card and someone used it, what now?",
]


def _run(model_or_path: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.fixture(scope="module", params=["learned", "max_prob"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "model"
    labels = sorted({y for _, y in separable(1)})
    # 10% of labels shuffled: the surrogate errs sometimes, so a learned acceptor can be fitted
    rng = np.random.default_rng(0)
    traces = [(x, str(rng.choice(labels)) if rng.random() < 0.1 else y) for x, y in separable(150)]
    result = fit(traces, out, quiet=True, candidates=["logreg"], acceptors=(request.param,),
                 target=0.8)  # fmt: skip
    assert result.status == "deployed"
    assert result.manifest["acceptor"]["kind"] == request.param
    assert "ood" in result.manifest and "clusters" in result.manifest
    return out


def test_stitched_graph_matches_the_stages_run_one_by_one(model_dir: Path) -> None:
    router = Router.load(model_dir)
    manifest, pipe = router.manifest.raw, router.pipeline
    feats = pipe.embed(TEXTS)
    head = _run(str(model_dir / manifest["classifier"]["file"]), {"features": feats})
    probs = head[0]
    sim = head[1].reshape(-1) if "ood" in manifest else np.ones(len(TEXTS), np.float32)
    acc_feats = acceptor_features(probs, sim)
    kind = manifest["acceptor"]["kind"]
    if kind == "learned":
        out = _run(str(model_dir / manifest["acceptor"]["file"]), {"acceptor_features": acc_feats})
        accept = out[-1][:, -1]
    else:
        accept = simple_score(kind, acc_feats)
    scores = router.score(TEXTS)
    np.testing.assert_allclose(scores.probabilities, probs, atol=1e-6)
    np.testing.assert_allclose(scores.ood_similarity, sim, atol=1e-6)
    np.testing.assert_allclose(scores.accept_score, accept, atol=1e-5)
    if "clusters" in manifest:
        cluster = _run(str(model_dir / manifest["clusters"]["file"]), {"features": feats})[0]
        np.testing.assert_array_equal(scores.cluster, cluster.reshape(-1))


@pytest.mark.parametrize("kind", ["max_prob", "margin"])
@pytest.mark.parametrize("n_classes", [1, 3])
def test_simple_acceptors_without_ood_or_clusters(kind: str, n_classes: int) -> None:
    rng = np.random.default_rng(0)
    head = build_head(6, n_classes, rng.normal(size=(6, n_classes)), temperature=2.0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    probs, sim, accept, cluster = _run(stitch(head, n_classes, kind), {"features": x})
    assert list(OUTPUTS) == ["probabilities", "similarity", "accept_score", "cluster"]
    np.testing.assert_array_equal(sim, np.ones(5, np.float32))
    np.testing.assert_array_equal(cluster, -np.ones(5, np.int64))
    expected = simple_score(kind, acceptor_features(probs, sim))
    np.testing.assert_allclose(accept, expected, atol=1e-6)


def test_sparse_head_gives_the_dense_heads_similarity() -> None:
    rng = np.random.default_rng(1)
    dim, k = 64, 4
    projection = rng.normal(size=(dim, k))
    centroids = rng.normal(size=(k, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    x = np.where(rng.random((6, dim)) < 0.1, rng.random((6, dim)), 0.0).astype(np.float32)
    x[2] = 0.0  # an empty row: similarity 0, not NaN
    outs = [
        _run(build_head(dim, k, projection, centroids=centroids, sparse=s), {"features": x})
        for s in (True, False)
    ]
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-6)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-6)
    assert outs[0][1][2] == 0.0
