"""`tracer scan`: coverage and savings at several targets from one quick fit, and the
gate's verdict at each; the figure at the middle target is the one a fit there reaches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.sim.synthetic import make_intents, random_labels
from router.settings import FitOptions
from training.fit import fit
from training.scan import FIRST_FIT_SHARE


def write_traces(path: Path, rows: list[tuple[str, str]], priced: bool = True) -> Path:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for text, label in rows:
            line: dict[str, object] = {"input": text, "label": label}
            if priced:
                line["cost_usd"] = round(rng.uniform(1e-5, 3e-5), 8)
            fh.write(json.dumps(line) + "\n")
    return path


def run_scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["scan", *args])
    return code, capsys.readouterr().out


def test_scan_gives_each_target_the_gates_verdict_and_the_savings(tmp_path, capsys):
    rows = make_intents(1200, seed=7)
    path = write_traces(tmp_path / "traces.jsonl", rows)
    code, out = run_scan(capsys, str(path), "--json")
    assert code == 0
    result = json.loads(out)
    verdicts = {v["alpha"]: v for v in result["verdicts"]}
    assert sorted(verdicts) == [0.9, 0.95, 0.97]
    assert result["calls"] == len(rows) and result["priced"] == len(rows)
    assert result["delta"] == pytest.approx(0.05 * FIRST_FIT_SHARE)
    mean_cost = result["cost_usd"] / len(rows)
    deployed = [v for v in result["verdicts"] if v["deploy"]]
    assert deployed, "the intent set certifies at 0.90 at least"
    for v in result["verdicts"]:
        assert v["calls_avoided"] == round(v["coverage"] * len(rows))
        if v["deploy"]:
            assert v["lower_bound"] >= v["alpha"] and v["coverage"] >= 0.2
            assert v["usd_saved"] == pytest.approx(v["calls_avoided"] * mean_cost)
            assert v["test_coverage"] is not None
        else:
            assert v["code"] and v["reason"] and v["calls_avoided"] == 0
    coverages = [verdicts[a]["coverage"] for a in (0.9, 0.95, 0.97)]
    assert coverages == sorted(coverages, reverse=True), "a stricter target never covers more"

    # The middle target's figures are a fit's at that target, as the proxy's first fit runs it.
    options = FitOptions(target=0.95, delta_share=FIRST_FIT_SHARE, quiet=True, report=False)
    fitted = fit(rows, tmp_path / "fit", options)
    middle = verdicts[0.95]
    assert middle["deploy"] == fitted.deployed
    if fitted.deployed:
        assert middle["coverage"] == fitted.manifest["calibration"]["coverage"]
        assert middle["threshold"] == fitted.manifest["threshold"]


def test_scan_on_noise_refuses_everywhere_and_says_why(tmp_path, capsys):
    path = write_traces(tmp_path / "noise.jsonl", random_labels(480, seed=3), priced=False)
    code, out = run_scan(capsys, str(path), "--alphas", "0.9,0.95")
    assert code == 0  # a refusal is a result, not an error
    assert out.count("refuse") >= 2 and "deploy " not in out
    assert "refused (no_threshold)" in out or "refused (coverage_below_minimum)" in out
    assert "no line carries cost_usd" in out


def test_scan_of_too_few_traces_refuses_before_fitting(tmp_path, capsys):
    path = write_traces(tmp_path / "few.jsonl", make_intents(30, seed=1))
    code, out = run_scan(capsys, str(path), "--json")
    assert code == 0
    verdicts = json.loads(out)["verdicts"]
    assert {v["code"] for v in verdicts} == {"too_few_traces"}


def test_scan_of_a_missing_file_is_an_error(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "absent.jsonl")]) == 2
    assert "tracer scan: error" in capsys.readouterr().err
