"""Render a routing report (the dict `training.report.build_report` makes) as one HTML file.

It lives with the serving contracts because both wings render it: the trainer when a
fit ends, the proxy when it adds live figures (the lanes' certificates) to the served
version's report. Self-contained: inline CSS and SVG, no script, no CDN, so it opens offline and can
be mailed around. Every string that comes from traces or labels goes through
`html.escape`: trace text is user input, and a report must never run it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

COLOURS = {"handled": "#1b7f4b", "deferred": "#c0392b", "mixed": "#b9770e"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2327;
background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#c9d3dd}
main{padding:18px 28px;max-width:1280px}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 18px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 10px} h3{font-size:14px;margin:12px 0 6px}
.kpis{display:flex;gap:12px;flex-wrap:wrap}
.kpi{border:1px solid #dde1e6;border-radius:6px;padding:8px 12px;min-width:120px}
.kpi b{display:block;font-size:20px} .kpi span{color:#5f6b76;font-size:12px}
table{border-collapse:collapse;width:100%;table-layout:fixed;overflow-wrap:anywhere} th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid #eceff2;vertical-align:top} th{font-size:12px;color:#5f6b76}
.tag{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-size:12px}
.ex{color:#39434d;font-size:13px} .muted{color:#6b7782} .grid{display:grid;
grid-template-columns:1fr 1fr;gap:16px} .refused{border-left:4px solid #c0392b}
svg text{font:11px system-ui,sans-serif;fill:#39434d}
"""


# Bidirectional controls can make trace text display reversed or hide what it says
# ("Trojan Source"); they are shown as visible code points instead.
_BIDI_VISIBLE = {
    c: f"<U+{c:04X}>"
    for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def esc(value: object) -> str:
    return html.escape(str(value).translate(_BIDI_VISIBLE), quote=True)


def pct(value: object, digits: int = 1) -> str:
    return f"{float(value) * 100:.{digits}f}%" if isinstance(value, int | float) else "n/a"


def num(value: object, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, int | float) else "n/a"


def interval(pair: object) -> str:
    if (
        isinstance(pair, Sequence)
        and len(pair) == 2
        and all(isinstance(v, int | float) for v in pair)
    ):
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"
    return ""


def tag(decision: str) -> str:
    colour = COLOURS.get(decision, "#5f6b76")
    return f'<span class="tag" style="background:{colour}">{esc(decision)}</span>'


def _kpis(report: dict[str, Any]) -> str:
    s = report.get("summary", {})
    items = [
        ("status", esc(report.get("status", "?"))),
        ("target α", num(report.get("alpha"), 2)),
        ("held-out traces", esc(s.get("n", "n/a"))),
        ("coverage (handled)", pct(s.get("coverage"))),
        ("agreement on handled", num(s.get("agreement_handled"))),
        ("clusters", esc(len(report.get("clusters", [])))),
    ]
    cells = "".join(f'<div class="kpi"><b>{v}</b><span>{esc(k)}</span></div>' for k, v in items)
    refusal = report.get("refusal")
    note = ""
    if isinstance(refusal, dict):
        note = (
            f'<p class="refused"><b>The parity gate refused this model.</b> '
            f"{esc(refusal.get('reason', ''))}</p>"
        )
    return f'<section><h2>Summary</h2><div class="kpis">{cells}</div>{note}</section>'


def _scatter(points: Sequence[dict[str, Any]], width: int = 560, height: int = 420) -> str:
    if not points:
        return '<p class="muted">No points.</p>'
    xs = [float(p["x"]) for p in points]
    ys = [float(p["y"]) for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 20) / ((x1 - x0) or 1.0)
    sy = (height - 20) / ((y1 - y0) or 1.0)
    dots = []
    for p, x, y in zip(points, xs, ys, strict=True):
        colour = COLOURS.get(str(p.get("decision")), "#5f6b76")
        title = f"{p.get('label', '')} (cluster {p.get('cluster', '')}, {p.get('decision', '')})"
        dots.append(
            f'<circle cx="{10 + (x - x0) * sx:.1f}" cy="{height - 10 - (y - y0) * sy:.1f}" r="2.6" '
            f'fill="{colour}" fill-opacity="0.7"><title>{esc(title)}</title></circle>'
        )
    legend = "".join(
        f'<rect x="{12 + i * 90}" y="8" width="10" height="10" fill="{c}"/>'
        f'<text x="{26 + i * 90}" y="17">{esc(k)}</text>'
        for i, (k, c) in enumerate(list(COLOURS.items())[:2])
    )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="partition map">{"".join(dots)}{legend}</svg>'
    )


def _frontier(
    rows: Sequence[dict[str, Any]], alpha: object, width: int = 560, height: int = 300
) -> str:
    pts = [r for r in rows if isinstance(r.get("coverage"), int | float)]
    if not pts:
        return '<p class="muted">No frontier.</p>'
    alphas = [float(r["alpha"]) for r in pts]
    a0, a1 = min(alphas), max(alphas)
    left, bottom, plot_w, plot_h = 44, height - 30, width - 60, height - 50

    def xy(a: float, c: float) -> tuple[float, float]:
        return left + (a - a0) / ((a1 - a0) or 1.0) * plot_w, bottom - c * plot_h

    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
        for i, (x, y) in enumerate(xy(float(r["alpha"]), float(r["coverage"])) for r in pts)
    )
    marks = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1d2b3a"><title>α {float(r["alpha"]):.3f}: '
        f"coverage {pct(r['coverage'])}, agreement {num(r.get('agreement'))}</title></circle>"
        for r in pts
        for x, y in [xy(float(r["alpha"]), float(r["coverage"]))]
    )
    axis = (
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#8a949e"/>'
        f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="#8a949e"/>'
        f'<text x="{left - 30}" y="{bottom - plot_h + 4}">100%</text>'
        f'<text x="{left - 22}" y="{bottom + 4}">0%</text>'
        f'<text x="{left}" y="{height - 8}">α {a0:.2f}</text>'
        f'<text x="{left + plot_w - 40}" y="{height - 8}">α {a1:.2f}</text>'
    )
    target = ""
    if isinstance(alpha, int | float) and a0 <= alpha <= a1:
        x, _ = xy(float(alpha), 0)
        target = (
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom - plot_h}" '
            f'stroke="#c0392b" stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{bottom - plot_h + 12}">'
            f"target</text>"
        )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="frontier">'
        f'{axis}{target}<path d="{path}" fill="none" stroke="#1d2b3a" stroke-width="2"/>{marks}</svg>'
    )


def _rows(cells: Iterable[Sequence[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)


def _clusters(clusters: Sequence[dict[str, Any]]) -> str:
    rows = []
    for c in clusters:
        labels = ", ".join(f"{esc(lbl)} ({esc(n)})" for lbl, n in c.get("top_labels", [])[:3])
        examples = "".join(
            f'<div class="ex">{tag(str(e.get("decision", "")))} {esc(e.get("input", ""))} '
            f'<span class="muted">→ {esc(e.get("label", ""))}</span></div>'
            for e in c.get("examples", [])[:3]
        )
        rows.append(
            [
                f"{esc(c.get('id'))}<div class='muted'>{esc(c.get('name') or '')}</div>",
                tag(str(c.get("decision", ""))),
                f"{esc(c.get('size'))} ({pct(c.get('share'))})",
                labels,
                f"{pct(c.get('coverage'))} <span class='muted'>{interval(c.get('coverage_ci'))}</span>",
                f"{num(c.get('agreement'))} <span class='muted'>{interval(c.get('agreement_ci'))}</span>",
                examples,
            ]
        )
    columns = [
        ("#", 11), ("decision", 8), ("size (share)", 8), ("top labels", 19),
        ("coverage", 10), ("agreement", 10), ("examples", 34),
    ]  # fmt: skip
    if any("lanes" in c for c in clusters):
        for row, c in zip(rows, clusters, strict=True):
            row.append(_lanes(c))
        columns = [(h, w - 2 if h in ("top labels", "examples") else w) for h, w in columns]
        columns[-1] = ("examples", 24)
        columns.append(("deferred answers: each lane (live)", 14))
    cols = "".join(f'<col style="width:{w}%">' for _, w in columns)
    head = "".join(f"<th>{h}</th>" for h, _ in columns)
    return f"<table><colgroup>{cols}</colgroup><tr>{head}</tr>{_rows(rows)}</table>"


def _lanes(card: dict[str, Any]) -> str:
    """Where the cluster's deferred requests go, and each lane's live agreement there."""
    chosen = f"<b>{esc(card.get('deferred_to') or 'teacher')}</b>"
    lines = [f"→ {chosen}"]
    for lane in card.get("lanes") or []:
        state = "serving" if lane.get("serving") else (
            "demoted" if lane.get("demoted") else
            "certified" if lane.get("certified") else "not certified"
        )  # fmt: skip
        cost = lane.get("usd_per_1000_calls")
        price = f", ${cost:.2f}/1k calls" if isinstance(cost, int | float) else ""
        lines.append(
            f"<div class='ex'>{esc(lane.get('lane'))} ({esc(lane.get('mode') or 'answers')}): "
            f"{num(lane.get('agreement'))} "
            f"<span class='muted'>{interval(lane.get('interval'))} on {esc(lane.get('checks'))}"
            f"{price}; {state}</span></div>"
        )
    return "".join(lines)


def _pairs(pairs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            f"{esc(p['handled'].get('input', ''))} <span class='muted'>→ "
            f"{esc(p['handled'].get('label', ''))}, score {num(p['handled'].get('score'))}</span>",
            f"{esc(p['deferred'].get('input', ''))} <span class='muted'>→ "
            f"{esc(p['deferred'].get('label', ''))}, score {num(p['deferred'].get('score'))}</span>",
            num(p.get("similarity")),
        ]
        for p in pairs
    ]
    head = "<tr><th>handled</th><th>deferred (its nearest neighbour)</th><th>similarity</th></tr>"
    return f"<table>{head}{_rows(rows)}</table>"


def _disagreements(cards: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            esc(c.get("teacher")),
            esc(c.get("surrogate")),
            esc(c.get("count")),
            f"{esc(c.get('handled', 0))}",
            "".join(f'<div class="ex">{esc(e)}</div>' for e in c.get("examples", [])[:3]),
        ]
        for c in cards
    ]
    head = (
        "<tr><th>teacher said</th><th>surrogate said</th><th>count</th>"
        "<th>of which handled</th><th>examples</th></tr>"
    )
    return f"<table>{head}{_rows(rows)}</table>"


def _tools(figures: Any) -> str:
    """A tool task's held-out figures: whole calls, narrowed names, and each argument."""
    if not isinstance(figures, dict):
        return ""
    rows = []
    for tool, f in sorted((figures.get("by_tool") or {}).items()):
        n = max(int(f.get("n", 0)), 1)
        whole = int(f.get("whole", 0))
        params = ", ".join(
            f"{esc(name)} {pct(p.get('agreement'))}"
            for name, p in (f.get("parameters") or {}).items()
        )
        rows.append(
            f"<tr><td>{esc(tool)}</td><td>{f.get('n', 0)}</td><td>{pct(whole / n)}</td>"
            f"<td>{pct(f.get('whole_agree', 0) / whole) if whole else 'n/a'}</td>"
            f"<td>{pct(int(f.get('narrowed', 0)) / n)}</td><td class='ex'>{params}</td></tr>"
        )
    head = (
        "<tr><th>tool</th><th>test calls</th><th>whole calls</th><th>whole-call agreement</th>"
        "<th>narrowed (name only)</th><th>argument agreement by parameter</th></tr>"
    )
    return (
        "<section><h2>Tool calls</h2>"
        f'<p class="muted">On the test split: whole calls answered locally '
        f"{pct(figures.get('whole_coverage'))} (agreement {num(figures.get('whole_agreement'))}), "
        f"narrowed to their tool {pct(figures.get('narrowed_coverage'))}.</p>"
        f"<table>{head}{''.join(rows)}</table></section>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The whole page; `report` follows the structure `build_report` documents."""
    title = f"TRACER report: {report.get('task') or 'task'} {report.get('version') or ''}".strip()
    source = report.get("source", {})
    subtitle = (
        f"{esc(source.get('description', 'held-out traces'))} · threshold "
        f"{num(report.get('threshold'), 4)} · built {esc(report.get('created_at', ''))}"
    )
    body = [
        _kpis(report),
        '<div class="grid">'
        "<section><h2>Partition map</h2>"
        '<p class="muted">Held-out inputs projected to 2-D (PCA of the embedding); '
        "green: the surrogate answers, red: it defers to the teacher.</p>"
        f"{_scatter(report.get('map', {}).get('points', []))}</section>"
        "<section><h2>Coverage / agreement frontier</h2>"
        '<p class="muted">Share of traffic the surrogate could answer at each target α, '
        "with thresholds certified on the calibration split.</p>"
        f"{_frontier(report.get('frontier', []), report.get('alpha'))}</section></div>",
        "<section><h2>Clusters</h2>"
        '<p class="muted">Groups of similar inputs; coverage and agreement with 95% '
        "Clopper-Pearson intervals.</p>"
        f"{_clusters(report.get('clusters', []))}</section>",
        "<section><h2>Boundary pairs</h2>"
        '<p class="muted">A handled input and its nearest deferred neighbour: where the line runs.</p>'
        f"{_pairs(report.get('boundary_pairs', []))}</section>",
        _tools(report.get("tools")),
        "<section><h2>Disagreements</h2>"
        "<p class=\"muted\">Inputs where the surrogate's label differs from the teacher's, "
        "by label pair.</p>"
        f"{_disagreements(report.get('disagreements', []))}</section>",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header>"
        f"<main>{''.join(body)}</main></body></html>"
    )
