"""`tracer fit` as a user runs it: CSV in, "CERTIFIED" out, a refusal in plain words; an
encoder named `hf:OWNER/NAME` read from a pre-filled Hugging Face cache, offline."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.sim.synthetic import make_intents
from training.advice import refusal_advice
from training.cli import fit_command
from training.clusters import cluster_name

MINILM = Path(__file__).resolve().parents[3] / "shared" / "models" / "all-MiniLM-L6-v2-onnx-int8"
REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"


def write_csv(path: Path, rows: list[tuple[str, str]], columns: tuple[str, str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("columns", [("input", "label"), ("text", "category")])
def test_fit_takes_a_csv_and_says_certified(tmp_path, capfd, columns):
    data = write_csv(tmp_path / "traces.csv", make_intents(800, seed=1), columns)
    code = fit_command([str(data), "--out", str(tmp_path / "m"), "--target", "0.9",
                        "--candidates", "logreg"])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 0, err
    assert "CERTIFIED" in err and "DEPLOYED" not in err
    assert "certified; the artifact is in" in err
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["data"]["n_read"] == 800


def test_a_refusal_says_what_it_means_and_what_to_do(tmp_path, capfd):
    data = write_csv(tmp_path / "few.csv", make_intents(120, seed=2), ("input", "label"))
    code = fit_command([str(data), "--out", str(tmp_path / "m"), "--target", "0.99",
                        "--candidates", "logreg", "--quiet"])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 3, err
    assert "tracer fit: refused:" in err
    assert "Until then the teacher answers every request" in err
    assert "What helps: more traces" in err, err


def test_refusal_advice_in_words():
    words = refusal_advice(
        "nothing_to_certify", {}, target=0.95, n_traces=2000, n_labels=77, embedder="tfidf"
    )
    assert "about 3,080 for 77 labels" in words
    assert "a lower target than 0.95" in words
    assert "a closed label set" in words and "sentence-encoder embedder" in words
    closed = refusal_advice("nothing_to_certify", {}, closed_labels=True, embedder="tfidf+x")
    assert "closed label set" not in closed and "sentence-encoder" not in closed
    low = refusal_advice("coverage_below_minimum", {"best_certified_coverage": 0.07},
                         target=0.95, min_coverage=0.2)  # fmt: skip
    assert "only on 7% of the traffic" in low and "(20%)" in low and "min_coverage" in low
    assert "12 held-out traces" in refusal_advice("no_threshold", {"n_calibration": 12})
    assert "fixing what the error names" in refusal_advice("failed", {})


def test_clusters_are_named_by_their_contents():
    assert cluster_name(["card_arrival"] * 6 + ["card_delivery_estimate"] * 3 + ["a", "b", "c"]) \
        == "card_arrival, card_delivery_estimate +3"  # fmt: skip
    assert cluster_name(["x"] * 9 + ["y"]) == "x +1"  # y is 10%: counted, not named
    assert cluster_name(["x"] * 3) == "x"
    assert cluster_name([]) == "empty"


def fill_hf_cache(home: Path) -> None:
    """The layout huggingface_hub keeps: refs/main names a snapshot folder of the files."""
    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (snapshot / "onnx").mkdir(parents=True)
    shutil.copyfile(MINILM / "model.onnx", snapshot / "onnx" / "model.onnx")  # as the hub has it
    for name in ("tokenizer.json", "config.json", "tokenizer_config.json"):
        shutil.copyfile(MINILM / name, snapshot / name)


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"no encoder at {MINILM}")
def test_an_hf_encoder_is_read_from_the_cache_offline(tmp_path):
    fill_hf_cache(tmp_path / "hf")
    data = write_csv(tmp_path / "traces.csv", make_intents(400, seed=3), ("input", "label"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "proxy.cli", "fit", str(data), "--target", "0.9",
            "--candidates", "logreg", "--quiet"]  # fmt: skip
    done = subprocess.run([*base, "--out", str(tmp_path / "m"), "--embedder",
                           f"tfidf+hf:{REPO_ID}"], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    names = json.dumps(manifest["embedder"])
    assert REPO_ID in names, names
    assert (tmp_path / "m" / "encoder.onnx").is_file()
    missing = subprocess.run([*base, "--out", str(tmp_path / "x"), "--embedder",
                              "hf:nobody/no-such-encoder"], capture_output=True, text=True,
                             env=env, timeout=600)  # fmt: skip
    assert missing.returncode == 4  # failed (not refused): an error, said as such
    assert "not in the Hugging Face cache, and the hub cannot be reached" in missing.stderr
