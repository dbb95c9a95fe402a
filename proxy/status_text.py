"""`tracer status` for a person: one block per task, from the figures `proxy.status` read.

Kept apart from the reading so that `--json` and this text say the same things, and
a reader of either finds every figure under the same name.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _served(model: dict[str, Any] | None) -> list[tuple[str, str]]:
    if model is None:
        return [("served", "nothing yet: the teacher answers every request")]
    if not model["loadable"]:
        return [("served", f"{model['version']} (not servable: refused, failed or broken)")]
    test = model.get("test") or {}
    fitted = model.get("created_at") or "?"
    certified = (
        f"coverage {_f(model['certified_coverage'])} at agreement "
        f"{_f(model['calibration_agreement'])} (lower bound "
        f"{_f(model['calibration_lower_bound'])} >= target {model['target']}, confidence "
        f"{_g(model['confidence'])}, {model['calibration_n']} calibration traces)"
    )
    held_out = (
        f"coverage {_f(test.get('coverage'))}, agreement "
        f"{_f(test.get('agreement_handled'))} on {test.get('n')} traces"
    )
    pinned = " (pinned)" if model.get("pinned") else ""
    return [
        (
            "served",
            f"{model['version']}{pinned}, fitted {fitted}, threshold {_g(model['threshold'])}",
        ),
        ("certified", certified),
        ("held-out test", held_out),
    ]


def _state(fb: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not fb:
        return []
    rows = [("state", fb["state"] + (f": {fb['reason']}" if fb.get("reason") else ""))]
    if "audits" in fb:
        rows.append(
            (
                "live checks",
                f"{fb['audits']} audits of the served version, agreement {_f(fb['agreement'])} "
                f"(lower bound {_f(fb['agreement_lower_bound'])}), drift score "
                f"{_f(fb['drift_score'], 2)} (1 = demotion), shift score "
                f"{_f(fb['shift_score'], 2)} (1 = alarm: unusual inputs well above the "
                f"{_f(fb['unusual_expected'])} calibration saw), shift alarm "
                f"{'yes' if fb['shift_alarm'] else 'no'}; {fb['derived']}",
            )
        )
    return rows


def _live(windows: dict[str, dict[str, Any]], shadow: bool) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("live")
    for name in windows:
        table.add_column(f"last {name}", justify="right")
    hour, day = windows["hour"], windows["day"]

    def row(label: str, key: str, fmt: Any = str) -> None:
        table.add_row(label, *(fmt(w[key]) for w in (hour, day)))

    row("requests", "requests")
    row("handled", "handled")
    row("coverage", "coverage", _f)
    row("audits", "audits")
    row("agreement", "agreement", _f)
    if shadow or day["shadow"]:
        row("would handle (shadow)", "shadow_coverage", _f)
        row("would agree (shadow)", "shadow_agreement", _f)
    if day["by_lane"]:
        row("answered by a lane", "by_lane")
    if hour.get("cut_short") or day.get("cut_short"):
        table.caption = "counted over the task's newest rows only: the window holds more"
    return table


def _refit(row: dict[str, Any] | None) -> str:
    if row is None:
        return "none yet"
    version = f" {row['version']}" if row["version"] else ""
    text = f"{row['outcome']}{version} at {row['created_at']} on {row['n_traces']} traces"
    return text + (f": {row['reason']}" if row.get("reason") else "")


def _traces(counts: dict[str, dict[str, int]]) -> str:
    if not counts:
        return "none"
    parts = []
    for source, c in sorted(counts.items()):
        extra = f" (+{c['invalid']} invalid)" if c["invalid"] else ""
        parts.append(f"{source} {c['valid']}{extra}")
    return ", ".join(parts)


def render(result: list[dict[str, Any]], out: TextIO) -> None:
    console = Console(file=out, highlight=False, soft_wrap=True)
    for entry in result:
        head = (
            f"task {entry['task']} ({entry['mode']}, target {entry['target']}, "
            f"confidence {entry['confidence']})"
        )
        console.print(Text(head, style="bold"))
        rows = _served(entry["served"]) + _state(entry.get("fallback"))
        if "store" in entry:
            rows.append(("store", entry["store"]))
        else:
            rows += [
                ("last refit", _refit(entry["last_refit"])),
                ("traces", _traces(entry["traces"])),
            ]
        for key, value in rows:
            console.print(Text(f"  {key:<14}") + Text(value))
        if "live" in entry:
            console.print(
                Padding(_live(entry["live"], entry["mode"] == "shadow"), (0, 0, 0, 2), expand=False)
            )
        console.print()
