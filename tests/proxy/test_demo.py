"""`tracer demo`, small: the flywheel turns within three short days; bad input fails clearly."""

from __future__ import annotations

import re

from proxy.sim.demo import demo_command


def test_demo_reaches_coverage_by_the_last_day(capsys, tmp_path):
    code = demo_command(
        [
            "--days", "3", "--per-day", "300", "--teacher-latency-ms", "0",
            "--target", "0.85", "--concurrency", "8", "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    days = dict(re.findall(r"day (\d): coverage ([\d.]+)%", out))
    assert set(days) == {"1", "2", "3"}, out
    assert float(days["1"]) == 0.0  # cold start: the teacher answers everything
    assert float(days["3"]) > 0.0, out
    assert "The flywheel, day by day" in out
    assert re.search(r"Estimated\s+cost\s+saved:\s+\$\d", out), out
    assert re.search(
        r"samples\s+more\s+of\s+its\s+traffic.*?\d+\.\d%\s+by\s+the\s+end", out, re.S
    ), out
    assert (tmp_path / "artifacts" / "intents" / "current.json").is_file()


def test_missing_data_path_fails_clearly(capsys, tmp_path):
    missing = tmp_path / "no-such-dataset"
    code = demo_command(["--data", str(missing)])
    out = capsys.readouterr().out
    assert code != 0
    assert "tracer demo failed" in out
    assert "no data at" in out and "no-such-dataset" in out
