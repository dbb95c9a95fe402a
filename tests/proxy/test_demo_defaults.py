"""`tracer demo --data SET` sizes its stream from the data, and says a refusal in words."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from proxy.sim.demo import demo_command, parse_args, stream
from proxy.sim.flywheel import StreamDefaults, stream_defaults
from proxy.sim.synthetic import make_intents

BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "banking77"


@pytest.mark.parametrize(
    ("rows", "labels", "expected"),
    [
        (None, 8, StreamDefaults(400, 6, 1000)),  # the built-in set: as before
        (13_083, 77, StreamDefaults(3100, 4, 3080)),  # Banking77, train and test
        (22_495, 150, StreamDefaults(5000, 4, 6000)),  # CLINC150 in scope: capped a day
        (2_765, 2, StreamDefaults(400, 6, 1000)),  # RTE
        (1_000, 77, StreamDefaults(200, 5, 3080)),  # little data: at least four days
    ],
)
def test_stream_defaults_follow_the_labels_and_the_size(rows, labels, expected):
    assert stream_defaults(rows, labels) == expected


@pytest.mark.skipif(not BANKING77.is_dir(), reason=f"no Banking77 at {BANKING77}")
def test_banking77_gets_days_big_enough_for_77_labels():
    console = Console(record=True, width=200)
    rows, s = stream(parse_args(["--data", str(BANKING77)]), console)
    assert (s.per_day, s.days, s.audit_boost, s.min_new_traces) == (3100, 4, 3080, 0)
    assert len(rows) == 12_400 and len({y for _, y in rows}) == 77
    said = "13,083 labelled rows, 77 labels: 3,100 requests a day for 4 days (chosen from"
    assert said in console.export_text()
    given, s = stream(parse_args(["--data", str(BANKING77), "--per-day", "500", "--days", "2"]),
                      console)  # fmt: skip
    assert (s.per_day, s.days, len(given)) == (500, 2, 1000)


def test_a_demo_that_never_certifies_says_what_to_do(tmp_path, capsys):
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps({"input": t, "label": y}) + "\n"
                            for t, y in make_intents(300, seed=4)))  # fmt: skip
    code = demo_command(["--data", str(data), "--per-day", "150", "--days", "2",
                         "--target", "0.995", "--teacher-latency-ms", "0",
                         "--workdir", str(tmp_path / "w")])  # fmt: skip
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 1, out
    assert "no model was ever deployed" in out
    assert "Until then the teacher answers every request" in out
    assert "What helps:" in out and "a lower target than 0.995" in out, out


def test_parse_args_leaves_sizes_to_the_data():
    args = parse_args([])
    assert isinstance(args, argparse.Namespace)
    assert (args.per_day, args.days, args.audit_boost) == (None, None, None)
