from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proxy.sim.synthetic import random_labels, separable
from router import ArtifactRefused, Router
from training.datasets import load_labelled
from training.fit import FitOptions, FitResult, fit
from training.stages import shares_of_sampled as _shares_of_sampled
from training.traces import Trace, clean_traces, load_traces, write_traces

FAST = {"quiet": True, "candidates": ["linear_svm"]}


def test_deploys_on_separable_set(deployed_artifact: FitResult) -> None:
    m = deployed_artifact.manifest
    assert deployed_artifact.status == "deployed"
    assert m["threshold"] is not None and m["calibration"]["lower_bound"] >= m["alpha"]
    assert m["calibration"]["coverage"] >= 0.8
    # what the live shift check expects: the least sure 5% of in-distribution inputs (at
    # most: on a set this easy, most scores are tied at the top)
    cal = m["calibration"]
    assert 0.0 < cal["low_accept"] <= 1.0
    assert cal["ood_share"] <= cal["unusual_share"] <= cal["ood_share"] + 0.06
    assert m["test"]["n"] > 0 and m["test"]["agreement_handled"] >= 0.95
    assert set(m["splits"]) == {"fit", "validation", "calibration", "test"}
    assert sum(m["splits"].values()) == m["data"]["n_used"]
    assert m["parity"]["embedding_max_abs_diff"] < 1e-4
    assert {"numpy", "onnxruntime", "scikit-learn"} <= set(m["versions"])
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in m["files"])
    router = Router.load(deployed_artifact.out_dir)
    assert router.version == m["version"]


def test_refuses_on_random_labels(tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = fit(random_labels(600), out, **FAST)
    assert result.status == "refused"
    refusal = result.manifest["refusal"]
    # Nothing certifies even on validation, so calibration is never tested: no delta spent.
    assert refusal["code"] == "nothing_to_certify"
    assert "spent none of delta" in refusal["reason"]
    assert result.manifest["delta_spent"] == 0.0
    # A refusal ships no model: its manifest, and a report that says why.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.html", "report.json"]
    with pytest.raises(ArtifactRefused) as info:
        Router.load(out)
    assert info.value.manifest.status == "refused"


def test_refuses_too_few_traces(tmp_path: Path) -> None:
    result = fit(separable(5), tmp_path / "m", **FAST)
    assert result.status == "refused"
    assert result.manifest["refusal"]["code"] == "too_few_traces"


def test_same_seed_same_splits_and_threshold(tmp_path: Path) -> None:
    data = separable(100, seed=3)
    a = fit(data, tmp_path / "a", **FAST)
    b = fit(data, tmp_path / "b", **FAST)
    assert a.manifest["splits"] == b.manifest["splits"]
    assert a.manifest["threshold"] == b.manifest["threshold"]
    assert a.manifest["files"]["head.onnx"] == b.manifest["files"]["head.onnx"]


def test_failed_fit_leaves_no_artifact(tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(ValueError):
        fit(separable(30), out, FitOptions(quiet=True, test_size=0.5, calibration_size=0.5))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_every_candidate_exports_onnx_in_parity(tmp_path: Path) -> None:
    """Each candidate and the learned acceptor, refit and exported: ONNX matches sklearn."""
    for name in ("logreg", "mlp", "extra_trees", "knn"):
        result = fit(
            separable(100, seed=5),
            tmp_path / name,
            quiet=True,
            candidates=[name],
            acceptors=("learned",),
            min_coverage=0.0,
            svd_components=16,
        )
        parity = result.manifest["parity"]
        assert parity["label_agreement"] == 1.0, name
        assert parity["probability_max_abs_diff"] < 1e-4, name
        assert result.manifest["classifier"]["kind"] == name


def test_traces_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import eval_command, fit_command

    traces = tmp_path / "traces.jsonl"
    data = separable(100, seed=7)
    write_traces(traces, [*data, ("", "card_arrival"), ("bad label here", "nope")])
    out = tmp_path / "m"
    code = fit_command(
        [str(traces), "--out", str(out), "--target", "0.9", "--quiet",
         "--candidates", "linear_svm",
         "--labels", "card_arrival,exchange_rate,lost_card,top_up"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["empty_input"] == 1 and manifest["data"]["invalid_label"] == 1
    held = tmp_path / "held.jsonl"
    write_traces(held, separable(20, seed=99))
    capsys.readouterr()
    assert eval_command([str(out), str(held)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 80 and 0 <= report["coverage"] <= 1
    assert report["agreement_handled"] is None or report["agreement_handled"] >= 0.9
    # a refusal: eval exits non-zero
    write_traces(traces, random_labels(300))
    assert fit_command([str(traces), "--out", str(tmp_path / "r"), "--quiet",
                        "--candidates", "linear_svm"]) == 3  # fmt: skip
    assert eval_command([str(tmp_path / "r"), str(held)]) == 3
    assert load_labelled(held)[0][1]


def test_router_decisions_match_recorded_test_figures(deployed_artifact: FitResult) -> None:
    router = Router.load(deployed_artifact.out_dir)
    texts = [t for t, _ in separable(30, seed=11)]
    batch = router.predict_batch(texts)
    single = [router.predict(t) for t in texts]
    assert [d.label for d in batch] == [d.label for d in single]
    assert np.allclose([d.accept_score for d in batch], [d.accept_score for d in single], atol=1e-5)


def test_deferred_traces_only_train(tmp_path: Path) -> None:
    """Traces a served model deferred are its hard cases: never calibration or test."""
    sampled = [Trace(x, y) for x, y in separable(100, seed=5)]
    deferred = [Trace(f"{x} again", y, "deferred") for x, y in separable(60, seed=6)]
    result = fit(sampled + deferred, tmp_path / "m", **FAST)
    m = result.manifest
    assert m["data"]["representative"] == len(sampled)
    assert m["data"]["deferred_fit_only"] == len(deferred)
    lines = (tmp_path / "m" / "heldout.jsonl").read_text().splitlines()
    held = [json.loads(line) for line in lines]
    assert held and not {h["input"] for h in held} & {t.input for t in deferred}
    # What the deferred traces add to the fit split is taken from it for calibration.
    assert m["splits"]["calibration"] > FitOptions().calibration_size * len(sampled) + 1
    assert sum(m["splits"].values()) == len(sampled) + len(deferred)


def test_split_shares_with_deferred_traces() -> None:
    shares = {"fit": 0.6, "validation": 0.15, "calibration": 0.15, "test": 0.1}
    assert _shares_of_sampled(shares, 1000, 0) == shares
    some = _shares_of_sampled(shares, 1000, 300)  # 0.6 * 1300 - 300 = 480 sampled to fit
    assert some["fit"] == pytest.approx(0.48) and some["calibration"] == pytest.approx(0.27)
    many = _shares_of_sampled(shares, 1000, 5000)  # deferred alone fill the fit share
    assert many["fit"] == 0.0 and many["calibration"] == pytest.approx(0.75)
    assert many["validation"] == 0.15 and many["test"] == 0.1


def test_source_round_trips_and_a_sampled_duplicate_wins(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_traces(path, [Trace("a", "x", "deferred"), Trace("b", "y"), ("c", "z")])
    loaded = load_traces(path)
    assert [t.source for t in loaded] == ["deferred", "teacher", "teacher"]
    kept, _ = clean_traces([Trace("Same  text", "x", "deferred"), Trace("same text", "x", "audit")])
    assert [(t.label, t.source) for t in kept] == [("x", "audit")]


def test_horizon_certifies_a_stricter_rate(tmp_path: Path) -> None:
    data = separable(150, seed=8)
    plain = fit(data, tmp_path / "plain", **FAST, target=0.9).manifest
    batch = fit(data, tmp_path / "batch", **FAST, target=0.9, horizon=500).manifest
    assert plain["certified"] == {"alpha": 0.9, "delta": pytest.approx(0.05), "horizon": 0}
    assert batch["certified"]["alpha"] > 0.92
    assert batch["certified"]["delta"] == pytest.approx(0.025)
    if batch["status"] == "deployed":
        assert batch["calibration"]["lower_bound"] >= batch["certified"]["alpha"]
        assert batch["calibration"]["coverage"] <= plain["calibration"]["coverage"]
    else:
        assert "on the next 500 handled inputs" in batch["refusal"]["reason"]


def test_an_error_inside_a_fit_is_a_recorded_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug or bad data mid-fit writes a `failed` manifest with the reason; the CLI says
    it in one line and exits 4, with no traceback."""
    import training.stages as fit_module
    from training.cli import fit_command

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ONNX export disagrees with sklearn")

    monkeypatch.setattr(fit_module, "embed_splits", broken)
    traces = tmp_path / "traces.jsonl"
    write_traces(traces, separable(60, seed=2))
    out = tmp_path / "m"
    code = fit_command([str(traces), "--out", str(out), "--quiet", "--candidates", "linear_svm"])
    err = capsys.readouterr().err
    assert code == 4
    assert "failed: RuntimeError: ONNX export disagrees" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "RuntimeError" in manifest["refusal"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.html", "report.json"]


def test_the_embedder_reads_a_bounded_prefix_of_any_input(deployed_artifact: FitResult) -> None:
    """Scoring cost must not grow with what a client sends: 4 MB scores like its prefix."""
    from router import Router
    from router.text import MAX_INPUT_CHARS, normalize_text

    router = Router.load(deployed_artifact.out_dir)
    head = "where is my card " * 300
    huge = head + "x" * 4_000_000
    assert len(normalize_text(huge)) <= MAX_INPUT_CHARS
    assert router.predict(huge) == router.predict(huge[:MAX_INPUT_CHARS])
