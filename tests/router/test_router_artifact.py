from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy.sim.synthetic import separable
from router import ArtifactError, Decision, Router
from training.fit import FitResult, fit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    out = tmp_path_factory.mktemp("router") / "model"
    return fit(separable(120, seed=1), out, quiet=True, candidates=["linear_svm"])


@pytest.fixture()
def copy(artifact: FitResult, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(artifact.out_dir, dst)
    return dst


def test_predict_shapes_and_reasons(artifact: FitResult) -> None:
    router = Router.load(artifact.out_dir)
    assert router.labels == artifact.manifest["labels"]
    assert router.threshold == artifact.manifest["threshold"]
    d = router.predict("my card has not arrived in the mail yet please help")
    assert isinstance(d, Decision)
    assert d.label == "card_arrival" and d.decision == "handled" and not d.ood
    assert d.reason.startswith("accepted: score")
    far = router.predict("zzz qqq xxyy 42")
    assert far.decision == "deferred"
    assert far.reason.startswith("deferred:")
    with pytest.raises(AttributeError):
        d.label = "x"  # type: ignore[misc]
    assert router.predict_batch([]) == []


def test_the_guesses_are_the_two_most_likely_labels(artifact: FitResult) -> None:
    router = Router.load(artifact.out_dir)
    texts = ["my card has not arrived in the mail yet please help", "zzz qqq xxyy 42"]
    scores = router.score(texts)
    decisions = router.predict_batch(texts)
    for decision, probabilities in zip(decisions, scores.probabilities, strict=True):
        ranked = [router.labels[i] for i in probabilities.argsort()[::-1]]
        assert decision.guesses == (decision.label, decision.runner_up) == tuple(ranked[:2])


def test_tampered_onnx_is_refused(copy: Path) -> None:
    head = copy / "head.onnx"
    data = bytearray(head.read_bytes())
    data[-10] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for head\.onnx"):
        Router.load(copy)


def test_edited_manifest_is_refused(copy: Path) -> None:
    path = copy / "manifest.json"
    m = json.loads(path.read_text())
    m["alpha"] = 0.5
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest was modified"):
        Router.load(copy)


def test_missing_file_and_missing_dir(copy: Path, tmp_path: Path) -> None:
    (copy / "tfidf.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"missing: tfidf\.onnx"):
        Router.load(copy)
    with pytest.raises(ArtifactError, match="not found"):
        Router.load(tmp_path / "nope")


def test_mismatched_labels_are_refused(copy: Path) -> None:
    from router.manifest import manifest_digest

    path = copy / "manifest.json"
    m = json.loads(path.read_text())
    m["labels"] = [*m["labels"], "extra_label"]
    m["manifest_sha256"] = manifest_digest(m)  # consistent manifest, wrong model
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="classes"):
        Router.load(copy)


def test_concurrent_predictions_agree(artifact: FitResult) -> None:
    router = Router.load(artifact.out_dir)
    texts = [t for t, _ in separable(25, seed=4)]
    expected = [router.predict(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(router.predict, texts * 4))
    assert got == expected * 4


def test_router_imports_stay_small() -> None:
    code = (
        "import sys, router; "
        "bad = [m for m in ('sklearn', 'scipy', 'training', 'proxy') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
