// The TRACER dashboard: fetches /dashboard/data every few seconds and draws it.
//
// Trace text (inputs, labels, reasons) is user input. It only ever reaches the page
// as a text node (`textContent`, `createTextNode`): no data is parsed as HTML, and the
// server's Content-Security-Policy runs no script but this file.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = { handled: "#1b7f4b", deferred: "#d9822b", teacher: "#7b8794" };
  const view = { task: null, range: "hour", timer: null, busy: false, again: false };
  const held = { key: null, heldout: [], centres: [] };  // a version's held-out points, kept

  // -- small DOM helpers: text always as text nodes --------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function titled(node, text) {
    node.appendChild(svg("title", {}, text));
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }
  const $ = (id) => document.getElementById(id);

  // -- formatting ------------------------------------------------------------------------
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const pct = (v, d = 1) => (isNum(v) ? (v * 100).toFixed(d) + "%" : "–");
  const num = (v, d = 3) => (isNum(v) ? v.toFixed(d) : "–");
  const int = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "–");
  function usd(v) {
    if (!isNum(v)) return "n/a";
    if (v === 0) return "$0";
    return "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));
  }
  function when(t, range) {
    if (!isNum(t)) return "";
    const d = new Date(t * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    if (range === "week") return d.toLocaleDateString([], { weekday: "short" }) + " " + hm;
    return hm;
  }
  function tag(text, kind) {
    return el("span", { class: "tag " + (kind || text || "") }, text || "–");
  }

  // -- charts: inline SVG ----------------------------------------------------------------
  const W = 360, H = 170, L = 34, R = 8, T = 8, B = 22;

  function frame(name, yTicks, ymin, ymax, buckets, range, fmt) {
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": name,
      "aria-label": name + " chart" });
    const y = (v) => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin || 1));
    for (const tick of yTicks) {
      root.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(tick), y2: y(tick) }));
      root.appendChild(svg("text", { x: L - 4, y: y(tick) + 3, "text-anchor": "end" }, fmt(tick)));
    }
    root.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const n = buckets.length;
    const labels = [[0, "start"], [Math.floor(n / 2), "middle"], [n, "end"]];
    for (const [i, anchor] of labels) {  // bucket edges: the range's start, middle and end
      if (n === 0) continue;
      const t = i < n ? buckets[i].t : buckets[n - 1].t + (buckets[n - 1].t - (n > 1 ? buckets[n - 2].t : buckets[n - 1].t - 60));
      const x = L + ((W - L - R) * i) / n;
      root.appendChild(svg("text", { x, y: H - 6, "text-anchor": anchor }, when(t, range)));
    }
    return { root, y, x: (i) => L + ((W - L - R) * (i + 0.5)) / n, step: (W - L - R) / Math.max(n, 1) };
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return v;
  }

  function barChart(box, buckets, range) {
    const top = niceMax(Math.max(0, ...buckets.map((b) => b.requests)));
    const ticks = [0, top / 2, top];
    const f = frame("requests", ticks, 0, top, buckets, range, (v) => int(v));
    let bars = 0;
    buckets.forEach((b, i) => {
      let base = 0;
      for (const kind of ["handled", "deferred", "teacher"]) {
        const v = b[kind] || 0;
        if (!v) continue;
        const y0 = f.y(base), y1 = f.y(base + v);
        const rect = svg("rect", { class: "bar-" + kind, x: f.x(i) - f.step * 0.4, y: y1,
          width: Math.max(f.step * 0.8, 0.8), height: Math.max(y0 - y1, 0.5), "data-kind": kind });
        titled(rect, `${when(b.t, range)}: ${v} ${kind} of ${b.requests}`);
        f.root.appendChild(rect);
        base += v;
        bars += 1;
      }
    });
    f.root.setAttribute("data-bars", String(bars));
    clear(box).appendChild(f.root);
  }

  function lineChart(box, name, buckets, range, series, target) {
    const values = series.flatMap((s) => buckets.map(s.value)).filter(isNum);
    let lo = 0;
    if (name === "agreement" && values.length) {
      lo = Math.max(0, Math.floor((Math.min(...values, isNum(target) ? target : 1) - 0.05) * 10) / 10);
    }
    const ticks = [lo, (lo + 1) / 2, 1];
    const f = frame(name, ticks, lo, 1, buckets, range, (v) => pct(v, 0));
    if (isNum(target)) {
      f.root.appendChild(titled(svg("line", { class: "target", x1: L, x2: W - R, y1: f.y(target),
        y2: f.y(target) }), "target " + pct(target)));
    }
    let points = 0;
    for (const s of series) {
      let path = "";
      let pen = false;
      buckets.forEach((b, i) => {
        const v = s.value(b);
        if (!isNum(v)) { pen = false; return; }
        path += (pen ? "L" : "M") + f.x(i).toFixed(1) + " " + f.y(v).toFixed(1);
        pen = true;
        const dot = svg("circle", { class: "dotpt " + s.cls, cx: f.x(i), cy: f.y(v), r: 1.8 });
        titled(dot, `${when(b.t, range)}: ${s.label} ${pct(v)} (${s.of(b)})`);
        f.root.appendChild(dot);
        points += 1;
      });
      if (path) f.root.appendChild(svg("path", { class: "line " + s.cls, d: path }));
    }
    f.root.setAttribute("data-points", String(points));
    if (!points) {
      f.root.appendChild(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" },
        name === "agreement" ? "no audits in this range" : "no requests in this range"));
    }
    clear(box).appendChild(f.root);
  }

  function meter(score) {
    const v = isNum(score) ? Math.max(0, Math.min(score, 1)) : 0;
    const root = svg("svg", { class: "meter", viewBox: "0 0 160 8", width: 160, height: 8 });
    root.appendChild(svg("rect", { x: 0, y: 0, width: 160, height: 8, rx: 4, fill: "#eceff2" }));
    const colour = v >= 1 ? "#d0021b" : v >= 0.5 ? "#d9822b" : "#2b6cb0";
    root.appendChild(svg("rect", { x: 0, y: 0, width: 160 * v, height: 8, rx: 4, fill: colour }));
    return root;
  }

  // -- the partition map -------------------------------------------------------------------
  function drawMap(box, map) {
    const MW = 640, MH = 420, PAD = 24;
    const root = svg("svg", { viewBox: `0 0 ${MW} ${MH}`, role: "img", "data-map": "partition",
      "aria-label": "partition map", "data-heldout": map.heldout.length, "data-live": map.live.length,
      "data-ood": map.live.filter((p) => p.ood).length });
    const all = map.heldout.concat(map.live, map.origin ? [map.origin] : []);
    if (!all.length) {
      root.appendChild(svg("text", { class: "empty", x: MW / 2, y: MH / 2, "text-anchor": "middle" },
        map.note || "no points to draw yet"));
      clear(box).appendChild(root);
      return;
    }
    const xs = all.map((p) => p.x), ys = all.map((p) => p.y);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const sx = (v) => PAD + ((MW - 2 * PAD) * (v - x0)) / (x1 - x0 || 1);
    const sy = (v) => MH - PAD - ((MH - 2 * PAD) * (v - y0)) / (y1 - y0 || 1);
    if (map.origin) {  // the hub: where an input similar to no cluster lands
      const ox = sx(map.origin.x), oy = sy(map.origin.y);
      root.appendChild(titled(svg("path", { class: "hub", "data-layer": "hub",
        d: `M${(ox - 7).toFixed(1)} ${oy.toFixed(1)}h14M${ox.toFixed(1)} ${(oy - 7).toFixed(1)}v14` }),
        "inputs similar to no cluster land here"));
    }
    const held = svg("g", { "data-layer": "heldout" });
    for (const p of map.heldout) {
      const c = svg("circle", { class: "heldout pt-" + p.decision + (p.ood ? " ood" : ""),
        cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 2.6 });
      held.appendChild(titled(c, `held-out · ${p.decision} · ${p.label}\n${p.input}`));
    }
    root.appendChild(held);
    const centres = svg("g", { "data-layer": "clusters" });
    for (const c of map.centres) {  // a numbered badge; the name is in its tooltip and card
      const badge = titled(svg("g", { class: "centre", "data-cluster": c.id }), `cluster ${c.id}: ${c.name}`);
      const cx = sx(c.x), cy = sy(c.y);
      badge.appendChild(svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: 8 }));
      badge.appendChild(svg("text", { x: cx.toFixed(1), y: (cy + 3.5).toFixed(1), "text-anchor": "middle" }, c.id));
      centres.appendChild(badge);
    }
    root.appendChild(centres);
    const live = svg("g", { "data-layer": "live" });
    for (const p of map.live.slice().reverse()) {  // the newest drawn last, on top
      const cx = sx(p.x).toFixed(1), cy = sy(p.y).toFixed(1);
      if (p.ood) live.appendChild(svg("circle", { class: "ood-ring", cx, cy, r: 8.5, "data-ood": "1" }));
      const c = svg("circle", { class: "live pt-" + p.decision, cx, cy, r: 4.6,
        "data-decision": p.decision, "data-id": p.id });
      const cluster = p.cluster === null || p.cluster === undefined ? "–" : p.cluster;
      live.appendChild(titled(c, `live · ${p.decision}${p.ood ? " · out of distribution" : ""} · ` +
        `${p.label || "no label"} · cluster ${cluster}\n${p.input}`));
    }
    root.appendChild(live);
    clear(box).appendChild(root);
  }

  // -- sections ----------------------------------------------------------------------------
  function kpi(value, label, note) {
    return el("div", { class: "kpi" }, el("b", {}, value), el("span", {}, label),
      note ? el("em", {}, note) : null);
  }

  function drawKpis(d) {
    const t = d.totals, s = d.savings, served = d.served;
    clear($("kpis")).append(
      kpi(pct(t.coverage), "coverage", `${int(t.handled)} of ${int(t.requests)} requests handled`),
      kpi(pct(t.agreement), "agreement", `on ${int(t.audits)} audited handled requests`),
      kpi(int(t.requests), "requests", `${int(t.ood)} out of distribution`),
      kpi(int(s.teacher_calls_avoided), "teacher calls avoided",
        isNum(s.since_start.teacher_calls_avoided) ? `${int(s.since_start.teacher_calls_avoided)} since this worker started` : null),
      kpi(usd(s.cost_saved_usd), "cost saved (est.)",
        isNum(s.mean_teacher_cost_usd) ? `teacher ${usd(s.mean_teacher_cost_usd)} a call` : "the teacher's calls are not priced"),
      kpi(served.version || "teacher", "served version", served.mode === "shadow" ? "shadow mode" : null),
    );
  }

  function drawChecks(d) {
    const c = d.checks;
    const dl = el("dl", { class: "checks" });
    const row = (k, ...v) => dl.append(el("dt", {}, k), el("dd", {}, ...v));
    row("state", c.fallback ? tag("fallback", "fallback") : tag(d.served.version ? "serving" : "teacher",
      d.served.version ? "handled" : "teacher"), c.shift_sampling ? " " : null,
      c.shift_sampling ? tag("shift alarm", "ood") : null);
    if (c.fallback) row("why", c.fallback);
    row("live agreement", `${pct(c.agreement)} on the last ${int(c.window || 0)} audits`);
    row(`lower bound (${pct(1 - c.delta, 0)} confidence)`, pct(c.agreement_lower),
      isNum(c.agreement_lower) && c.agreement_lower < c.target ? " (below the target: evidence still accumulating)" : "");
    row("target", pct(c.target));
    row("drift score", meter(c.drift_score), `${num(c.drift_score, 2)} (1 = back to the teacher)`);
    row("shift score", meter(c.shift_score), `${num(c.shift_score, 2)} (1 = traffic shift alarm)`);
    row("out of distribution", `${pct(c.ood_rate)} of this version's requests; the shift test allows ${pct(c.ood_expected)}`);
    row("audits of this version", int(c.audits || 0), c.shift_sampling ? " · sampling every request after a shift" : "");
    clear($("checks")).appendChild(dl);
  }

  function drawServed(d) {
    const s = d.served;
    const dl = el("dl", { class: "checks" });
    const row = (k, ...v) => dl.append(el("dt", {}, k), el("dd", {}, ...v));
    row("version", s.version || "none: the teacher answers");
    if (s.version) {
      row("threshold", num(s.threshold, 4));
      row("certified coverage", pct(s.certified_coverage));
      row("calibration agreement", pct(s.calibration_agreement));
    }
    row("mode", s.mode);
    clear($("served")).appendChild(dl);
    const body = clear($("refits").tBodies[0]);
    for (const r of d.refits) {
      body.appendChild(el("tr", {}, el("td", {}, when(r.t, "week")), el("td", {}, r.version || "–"),
        el("td", {}, tag(r.outcome, r.outcome)), el("td", {}, r.attempt ?? "–"),
        el("td", {}, isNum(r.delta) ? r.delta.toPrecision(2) : "–"), el("td", {}, int(r.n_traces)),
        el("td", { class: "text" }, r.reason || "")));
    }
    if (!d.refits.length) body.appendChild(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no fits yet")));
  }

  function drawShadow(d) {
    const s = d.shadow;
    $("shadow").hidden = !s;
    if (!s) return;
    clear($("shadow-kpis")).append(
      kpi(pct(s.coverage), "would-be coverage", `${int(s.would_handle)} of ${int(s.requests)} requests`),
      kpi(pct(s.agreement), "would-be agreement", `${int(s.agreed)} of ${int(s.judged)} judged; lower bound ${pct(s.agreement_lower)}`),
      kpi(int(s.teacher_calls_avoidable), "teacher calls it would avoid"),
      kpi(usd(s.cost_savable_usd), "cost it would save (est.)"),
    );
  }

  function drawRecent(d) {
    const body = clear($("recent").tBodies[0]);
    for (const r of d.recent) {
      body.appendChild(el("tr", { "data-id": r.id }, el("td", {}, when(r.t, "hour")),
        el("td", {}, tag(r.decision, r.decision), r.ood ? " " : null, r.ood ? tag("ood", "ood") : null),
        el("td", { class: "text" }, r.label || "–"), el("td", {}, r.cluster ?? "–"),
        el("td", { class: "text input", title: r.reason || "" }, r.input || "")));
    }
    if (!d.recent.length) body.appendChild(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no requests yet")));
  }

  function drawClusters(d) {
    const box = clear($("clusters"));
    const report = d.report;
    $("report-note").textContent = report ? `report of ${report.version || "?"}, on held-out traces` : "";
    if (!report) { box.appendChild(el("p", { class: "muted" }, "no report yet")); return; }
    if (report.refusal) box.appendChild(el("p", { class: "muted" }, "refused: " + report.refusal));
    for (const c of report.clusters) {
      const live = c.live || {};
      const card = el("article", { class: "card", "data-cluster": c.id },
        el("h3", {}, el("span", { class: "badge" }, c.id), " ", c.name || `cluster ${c.id}`, " ",
          tag(c.decision, c.decision)),
        el("p", {}, `${int(c.size)} held-out (${pct(c.share)}) · coverage ${pct(c.coverage)} · agreement ${pct(c.agreement)}`),
        el("p", { class: "muted" }, "labels: " + (c.top_labels || []).map((l) => `${l[0]} (${l[1]})`).join(", ")),
        el("p", {}, `live: ${int(live.requests)} of the newest requests, ${int(live.handled)} handled, ${int(live.ood)} out of distribution`));
      if ((c.lanes || []).length) {  // the lanes' live certificates: where deferred requests go
        card.appendChild(el("p", {}, `deferred requests go to ${c.deferred_to}`));
        for (const l of c.lanes) {
          const ci = l.interval ? ` [${pct(l.interval[0])}, ${pct(l.interval[1])}]` : "";
          const state = l.serving ? "serving" : l.demoted ? "demoted" : l.certified ? "certified" : "not certified";
          card.appendChild(el("p", { class: "muted", "data-lane": l.lane },
            `${l.lane} (${l.mode || "answers"}): agreement ${pct(l.agreement)}${ci} on ${int(l.checks)} checks · $${Number(l.usd_per_1000_calls).toFixed(2)} per 1,000 calls · ${state}`));
        }
      }
      const ul = el("ul", {});
      for (const e of c.examples || []) ul.appendChild(el("li", {}, e.input, " ", tag(e.decision, e.decision)));
      card.appendChild(ul);
      box.appendChild(card);
    }
  }

  function draw(d) {
    const select = $("task");
    if (select.options.length !== d.tasks.length) {
      clear(select);
      for (const name of d.tasks) select.appendChild(el("option", { value: name }, name));
    }
    select.value = d.task;
    for (const b of document.querySelectorAll("#ranges button")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === d.range));
    }
    const notice = $("notice");
    const from = d.series.history_from;
    notice.hidden = !isNum(from) || from <= d.series.start;
    notice.textContent = notice.hidden ? "" : `Counts start at ${new Date(from * 1000).toLocaleString()}: older requests were not read.`;
    drawKpis(d);
    const buckets = d.series.buckets;
    barChart($("chart-requests"), buckets, d.range);
    const cov = [{ cls: "", label: "coverage", value: (b) => b.coverage, of: (b) => `${b.handled}/${b.requests}` }];
    if (d.shadow) {
      cov.push({ cls: "shadow", label: "would-be coverage",
        value: (b) => (b.shadow ? b.shadow_handled / b.shadow : null), of: (b) => `${b.shadow_handled}/${b.shadow}` });
    }
    lineChart($("chart-coverage"), "coverage", buckets, d.range, cov, null);
    lineChart($("chart-agreement"), "agreement", buckets, d.range,
      [{ cls: "", label: "agreement", value: (b) => b.agreement, of: (b) => `${b.agreed}/${b.audits}` }], d.served.target);
    drawChecks(d);
    drawServed(d);
    drawShadow(d);
    $("map-method").textContent = d.map.version ? `version ${d.map.version}` + (d.map.note ? " · " + d.map.note : "") : (d.map.note || "");
    drawMap($("map"), d.map);
    drawRecent(d);
    drawClusters(d);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    $("status").classList.remove("error");
    document.body.setAttribute("data-ready", "1");
  }

  // -- fetching ----------------------------------------------------------------------------
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    view.task = h.get("task") || view.task;
    if (["hour", "day", "week"].includes(h.get("range"))) view.range = h.get("range");
  }
  function writeHash() {
    const h = new URLSearchParams();
    if (view.task) h.set("task", view.task);
    h.set("range", view.range);
    history.replaceState(null, "", "#" + h.toString());
  }

  async function refresh() {
    if (view.busy) { view.again = true; return; }  // a switch mid-fetch: fetch again after
    view.busy = true;
    view.again = false;
    let wait = 5;
    try {
      const q = new URLSearchParams({ range: view.range });
      if (view.task) q.set("task", view.task);
      if (view.task && held.key && held.key.task === view.task) q.set("have", held.key.version);
      const reply = await fetch("/dashboard/data?" + q.toString(), { credentials: "same-origin",
        headers: { Accept: "application/json" } });
      if (reply.status === 401) { location.assign("/dashboard/login"); return; }
      const d = await reply.json();
      if (!reply.ok) throw new Error((d.error && d.error.message) || reply.statusText);
      if (!d.task) {
        $("status").textContent = "no tasks are configured";
        return;
      }
      view.task = d.task;
      wait = d.refresh_seconds || wait;
      if (d.map.heldout === null && held.key && held.key.version === d.map.version && held.key.task === d.task) {
        d.map.heldout = held.heldout;
        d.map.centres = held.centres;
      } else {
        held.key = d.map.version ? { task: d.task, version: d.map.version } : null;
        held.heldout = d.map.heldout || [];
        held.centres = d.map.centres || [];
      }
      draw(d);
    } catch (err) {
      $("status").textContent = "update failed: " + (err && err.message ? err.message : String(err));
      $("status").classList.add("error");
    } finally {
      view.busy = false;
      clearTimeout(view.timer);
      view.timer = setTimeout(tick, view.again ? 0 : wait * 1000);
    }
  }
  function tick() {
    if (document.hidden) { view.timer = setTimeout(tick, 2000); return; }
    refresh();
  }

  function start() {
    readHash();
    $("task").addEventListener("change", (e) => { view.task = e.target.value; writeHash(); refresh(); });
    for (const b of document.querySelectorAll("#ranges button")) {
      b.addEventListener("click", () => { view.range = b.dataset.range; writeHash(); refresh(); });
    }
    refresh();
  }
  document.addEventListener("DOMContentLoaded", start);
})();
