from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.datasets import load_labelled
from training.traces import Trace, TraceFormatError, clean_traces, load_traces, write_traces

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def test_load_traces_reports_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"input": "a", "label": "x", "id": 1}) + "\n\n" + '{"input": "b"}\n')
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:3: missing key 'label'"):
        load_traces(path)
    path.write_text('{"input": "a", "label": "x"}\nnot json\n')
    with pytest.raises(TraceFormatError, match=r":2: invalid JSON"):
        load_traces(path)
    path.write_text('{"input": 3, "label": "x"}\n')
    with pytest.raises(TraceFormatError, match=r":1: 'input' must be a string"):
        load_traces(path)


def test_roundtrip_and_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_traces(path, [("héllo", "x"), Trace("b", "y")])
    assert load_traces(path) == [Trace("héllo", "x"), Trace("b", "y")]
    assert load_labelled(path) == [("héllo", "x"), ("b", "y")]


def test_clean_counts_duplicates_empty_invalid_and_conflicts() -> None:
    raw = [
        Trace("Where is  my card", "card"),
        Trace("where is my card", "card"),  # duplicate after normalisation
        Trace("   ", "card"),  # empty
        Trace("hello", "nonsense"),  # not in the label set
        Trace("rate?", "rate"),
        Trace("rate?", "rate"),
        Trace("rate?", "card"),  # conflict: majority 'rate' kept
    ]
    kept, stats = clean_traces(raw, labels=["card", "rate"])
    assert sorted(t.label for t in kept) == ["card", "rate"]
    assert stats.n_read == 7 and stats.n_used == 2
    assert stats.empty_input == 1 and stats.invalid_label == 1
    assert stats.duplicates == 2 and stats.conflicting_inputs == 1
    assert stats.conflicting_dropped == 1
    assert stats.invalid_examples == ["nonsense"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark data sets absent")
def test_benchmark_readers() -> None:
    bank = load_labelled(SHARED / "banking77", "test")
    assert len(bank) == 3080 and bank[0][1]
    oos = load_labelled(SHARED / "clinc150", "oos_test")
    assert len(oos) == 1000 and {lab for _, lab in oos} == {"oos"}
    rte = load_labelled(SHARED / "rte", "train")
    assert len(rte) == 2490 and " [SEP] " in rte[0][0]
