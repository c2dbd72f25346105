/* ftlog explore: the interactive part of the report and of `ftlog serve`, drawn with uPlot from the document that
   ftlog/explore.py builds. Every value from the dataset reaches the page as text (textContent, SVG text nodes,
   never innerHTML), so a job name can never become markup. */
(function () {
  "use strict";

  const root = document.getElementById("explore");
  if (!root || typeof uPlot === "undefined") return;
  const config = readJson("ftlog-config") || {};
  const PALETTE = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#ff9da6", "#79706e",
    "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939",
  ];
  const STATUS_COLOURS = {
    Waiting: "#bab0ac", Running: "#4c78a8", Done: "#54a24b", Failed: "#e45756", Stopped: "#f58518",
  };
  const TITLES = {
    model: "Model", train_mode: "Train mode", parameter_scale: "Parameter scale", job_id: "Job ID",
    job_name: "Job", run_status: "Status",
  };
  const METRICS = [["bleu_4", "BLEU-4"], ["rouge_1", "ROUGE-1"], ["rouge_2", "ROUGE-2"], ["rouge_l", "ROUGE-L"]];
  const CURVES = [["loss", "Training loss"], ["perplexity", "Perplexity"]];
  const HOVER_PX = 24; // how near the pointer a point must be for its tooltip

  const view = { x: "step", log: false, smoothing: 0, hidden: new Set(), selected: new Set(), sort: ["job_name", 1],
    filter: "" };
  let model = null; // the document, with what the page derives from it
  const charts = {};
  let version = null;

  // -- helpers ---------------------------------------------------------------------------------------------------
  function readJson(id) {
    const element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }
  const dash = "—";
  const show = (value) => (value == null || value === "" ? dash : String(value));
  function num(value, digits) {
    if (value == null || !isFinite(value)) return dash;
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }
  function time(ms) {
    if (ms == null) return dash;
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return dash;
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + (Math.floor(s / 60) % 60) + " min";
    return Math.floor(s / 86400) + " d " + (Math.floor(s / 3600) % 24) + " h";
  }

  // -- the model: what the page derives from the document ----------------------------------------------------------
  function derive(doc) {
    const runs = doc.runs;
    const n = runs.task_id.length;
    const by = doc.by;
    const key = (i) => by.map((c) => show(runs[c][i])).join(" · ");
    const groupOf = new Array(n);
    const names = new Set();
    for (let i = 0; i < n; i++) names.add((groupOf[i] = key(i)));
    const groups = Array.from(names).sort();
    const colour = new Map(groups.map((g, k) => [g, PALETTE[k % PALETTE.length]]));
    const c = doc.curves;
    const summary = [];
    for (let i = 0; i < n; i++) {
      const a = c.offsets[i], b = c.offsets[i + 1];
      let best = null, bestStep = null;
      for (let j = a; j < b; j++) {
        const v = c.loss[j];
        if (v != null && (best == null || v < best)) { best = v; bestStep = c.step[j]; }
      }
      summary.push({
        checkpoints: b - a, last_step: b > a ? c.step[b - 1] : null, final_loss: b > a ? c.loss[b - 1] : null,
        best_loss: best, best_step: bestStep, final_perplexity: b > a ? c.perplexity[b - 1] : null,
      });
    }
    return { doc, n, runs, groups, groupOf, colour, summary, curves: c };
  }

  // -- skeleton --------------------------------------------------------------------------------------------------
  const parts = {};
  function skeleton() {
    root.textContent = "";
    parts.updated = el("p", { class: "ex-updated", id: "ex-updated" });
    parts.counts = el("p", { class: "ex-counts", id: "ex-counts" });
    parts.chips = el("ul", { class: "chips", id: "ex-statuses" });
    const xStep = el("input", { type: "radio", name: "ex-x", value: "step", id: "ex-x-step", checked: "" });
    const xShare = el("input", { type: "radio", name: "ex-x", value: "fraction", id: "ex-x-fraction" });
    for (const input of [xStep, xShare]) input.addEventListener("change", () => { view.x = input.value; drawCurves(); });
    const log = el("input", { type: "checkbox", id: "ex-log" });
    log.addEventListener("change", () => { view.log = log.checked; drawCurves(); });
    const smooth = el("input", { type: "range", id: "ex-smoothing", min: "0", max: "0.99", step: "0.01", value: "0" });
    const smoothValue = el("output", { id: "ex-smoothing-value", text: "off" });
    smooth.addEventListener("input", () => {
      view.smoothing = Number(smooth.value);
      smoothValue.textContent = view.smoothing ? view.smoothing.toFixed(2) : "off";
      drawCurves();
    });
    const reset = el("button", { type: "button", id: "ex-reset", text: "Reset zoom" });
    reset.addEventListener("click", () => Object.values(charts).forEach(resetZoom));
    parts.controls = el("div", { class: "ex-controls" },
      el("span", { class: "ex-label", text: "x:" }),
      el("label", {}, xStep, " step"), el("label", {}, xShare, " share of the run"),
      el("label", {}, log, " log scale"),
      el("label", {}, "smoothing (EMA) ", smooth, " ", smoothValue),
      reset);
    parts.legend = el("div", { class: "ex-legend", id: "ex-legend" });
    parts.charts = el("div", { class: "ex-charts" });
    for (const [name] of CURVES) parts.charts.append(el("div", { class: "ex-chart", id: "ex-chart-" + name }));
    parts.tooltip = el("div", { class: "ex-tooltip", id: "ex-tooltip", role: "tooltip" });
    parts.tooltip.hidden = true;
    parts.marker = el("div", { class: "ex-marker", id: "ex-marker" });
    parts.marker.hidden = true;
    parts.compare = el("div", { class: "ex-compare", id: "ex-compare" });
    parts.timeline = el("div", { class: "ex-timeline", id: "ex-timeline" });
    parts.filter = el("input", { type: "search", id: "ex-filter", placeholder: "Filter runs: job, task, model, status…" });
    parts.filter.addEventListener("input", () => { view.filter = parts.filter.value.trim().toLowerCase(); drawTable(); });
    parts.shown = el("span", { class: "ex-shown", id: "ex-shown" });
    parts.table = el("table", { class: "ex-runs", id: "ex-runs" });
    parts.empty = el("p", { class: "empty", id: "ex-empty" });
    root.append(
      parts.updated, parts.counts, parts.chips,
      el("h2", { text: "Loss and perplexity" }),
      el("p", { class: "lead", text: "One line per task, one colour per group. Hover a line for its task and values; " +
        "drag or use the wheel to zoom, double-click to reset; click a group to hide or show it; select runs in " +
        "the table below to highlight their curves." }),
      parts.controls, parts.legend, parts.charts,
      el("h2", { text: "BLEU and ROUGE by group" }), parts.compare,
      el("h2", { text: "Status timeline" }), parts.timeline,
      el("h2", { text: "Runs" }),
      el("div", { class: "ex-controls" }, parts.filter, parts.shown),
      el("div", { class: "table-wrap ex-table-wrap" }, parts.table),
      parts.empty, parts.tooltip, parts.marker);
  }

  // -- header ------------------------------------------------------------------------------------------------------
  function drawHeader() {
    const { doc, runs, n } = model;
    const jobs = new Set(runs.job_id).size;
    parts.updated.textContent = "Data last updated " + time(doc.updated) +
      (config.live ? " · checked " + time(Date.now()) + " · refreshes by itself" : " · report written " +
        time(doc.generated));
    // The report's own header says as much; the live page has only this one.
    parts.counts.hidden = parts.chips.hidden = !config.live;
    parts.counts.textContent = n + " tasks in " + jobs + " jobs";
    const counts = new Map();
    for (const s of runs.run_status) counts.set(show(s), (counts.get(show(s)) || 0) + 1);
    parts.chips.textContent = "";
    for (const [status, count] of counts) {
      parts.chips.append(el("li", { class: "status-" + status.toLowerCase() }, status, el("b", { text: String(count) })));
    }
  }

  // -- curves ----------------------------------------------------------------------------------------------------
  function seriesData(name) {
    const { n, curves } = model;
    const values = curves[name];
    const out = [null];
    const alpha = 1 - view.smoothing;
    for (let i = 0; i < n; i++) {
      const a = curves.offsets[i], b = curves.offsets[i + 1];
      const last = b > a ? curves.step[b - 1] : null;
      const xs = new Array(b - a), ys = new Array(b - a);
      let smoothed = null;
      for (let j = a; j < b; j++) {
        let y = values[j];
        if (view.log && y != null && y <= 0) y = null;
        if (y != null && view.smoothing) y = smoothed = smoothed == null ? y : alpha * y + (1 - alpha) * smoothed;
        xs[j - a] = view.x === "step" ? curves.step[j] : last ? curves.step[j] / last : null;
        ys[j - a] = y;
      }
      out.push([xs, ys]);
    }
    return out;
  }

  function drawCurves() {
    for (const [name, title] of CURVES) {
      const holder = document.getElementById("ex-chart-" + name);
      if (charts[name]) { charts[name].destroy(); delete charts[name]; }
      holder.textContent = "";
      if (!model.curves.step.length) {
        holder.append(el("p", { class: "empty", text: "No checkpoints yet." }));
        continue;
      }
      const width = Math.max(320, holder.clientWidth || 600);
      const series = [{}];
      for (let i = 0; i < model.n; i++) {
        series.push({
          label: model.runs.task_id[i], stroke: model.colour.get(model.groupOf[i]), width: 1,
          show: !view.hidden.has(model.groupOf[i]), points: { show: false },
          facets: [{ scale: "x", auto: true, sorted: 1 }, { scale: "y", auto: true }],
        });
      }
      const chart = new uPlot({
        mode: 2, width, height: 340, title,
        legend: { show: false },
        scales: { x: { time: false }, y: view.log ? { distr: 3, log: 10 } : {} },
        axes: [
          { label: view.x === "step" ? "step" : "share of the run (step / last step)" },
          { label: title + (view.smoothing ? " (smoothed)" : ""), size: 64 },
        ],
        cursor: {
          drag: { x: true, y: true, uni: 30 }, points: { show: false }, dataIdx: () => null,
          bind: { dblclick: () => null },
        },
        series,
        hooks: { setCursor: [(u) => hover(u, name)], draw: [(u) => highlight(u), drawn] },
      }, seriesData(name), holder);
      chart.over.addEventListener("dblclick", () => resetZoom(chart));
      chart.over.addEventListener("wheel", (event) => wheelZoom(chart, event), { passive: false });
      chart.over.addEventListener("mouseleave", hideTooltip);
      chart.over.addEventListener("click", () => {
        if (chart._ftlogHover) toggleSelected(chart._ftlogHover.task);
      });
      chart.ftlogName = name;
      charts[name] = chart;
    }
  }

  // When every chart of the latest render has drawn once: how long the page took (for `make bench`).
  function drawn(u) {
    if (u._ftlogDrawn) return;
    u._ftlogDrawn = true;
    if (Object.values(charts).every((c) => c._ftlogDrawn)) root.dataset.drawnMs = String(performance.now());
  }

  function resetZoom(u) {
    u.setData(u.data, true);
  }

  function wheelZoom(u, event) {
    event.preventDefault();
    const factor = event.deltaY < 0 ? 0.8 : 1.25;
    const rect = u.over.getBoundingClientRect();
    const left = event.clientX - rect.left, top = event.clientY - rect.top;
    u.batch(() => {
      for (const [key, pos, dim] of [["x", left, rect.width], ["y", top, rect.height]]) {
        const scale = u.scales[key];
        if (scale.min == null || scale.max == null) continue;
        const at = u.posToVal(pos, key);
        if (scale.distr === 3) {
          const lat = Math.log10(at), lmin = Math.log10(scale.min), lmax = Math.log10(scale.max);
          u.setScale(key, { min: 10 ** (lat - (lat - lmin) * factor), max: 10 ** (lat + (lmax - lat) * factor) });
        } else {
          u.setScale(key, { min: at - (at - scale.min) * factor, max: at + (scale.max - at) * factor });
        }
        void dim;
      }
    });
  }

  // The point nearest the pointer, among the shown tasks: a binary search on each task's x values (sorted), then
  // the points within HOVER_PX of the pointer along x.
  function nearest(u, left, top) {
    let found = null, best = HOVER_PX * HOVER_PX;
    const lo = u.posToVal(left - HOVER_PX, "x"), hi = u.posToVal(left + HOVER_PX, "x");
    for (let s = 1; s < u.series.length; s++) {
      if (!u.series[s].show) continue;
      const [xs, ys] = u.data[s];
      let a = 0, b = xs.length;
      while (a < b) { const m = (a + b) >> 1; if (xs[m] < lo) a = m + 1; else b = m; }
      for (let j = a; j < xs.length && xs[j] <= hi; j++) {
        if (ys[j] == null || xs[j] == null) continue;
        const dx = u.valToPos(xs[j], "x") - left, dy = u.valToPos(ys[j], "y") - top;
        const d = dx * dx + dy * dy;
        if (d <= best) { best = d; found = { task: s - 1, index: j, series: s }; }
      }
    }
    return found;
  }

  function hover(u, name) {
    const { left, top } = u.cursor;
    if (left == null || left < 0 || top < 0) { hideTooltip(); u._ftlogHover = null; return; }
    const hit = nearest(u, left, top);
    u._ftlogHover = hit;
    if (!hit) { hideTooltip(); return; }
    const i = hit.task, j = model.curves.offsets[i] + hit.index;
    const runs = model.runs;
    const lines = [
      ["Task", runs.task_id[i]],
      ["Job", show(runs.job_name[i])],
      [model.doc.by.map((c) => TITLES[c] || c).join(" · "), model.groupOf[i]],
      ["Step", num(model.curves.step[j], 0)],
      ["Training loss", num(model.curves.loss[j], 6)],
      ["Perplexity", num(model.curves.perplexity[j], 6)],
    ];
    if (view.smoothing) lines.push([(name === "loss" ? "Loss" : "Perplexity") + " (smoothed)", num(u.data[hit.series][1][hit.index], 6)]);
    const tip = parts.tooltip;
    tip.textContent = "";
    tip.dataset.task = runs.task_id[i];
    tip.dataset.step = String(model.curves.step[j]);
    for (const [label, value] of lines) tip.append(el("div", {}, el("span", { class: "ex-k", text: label }), " ", el("span", { class: "ex-v", text: value })));
    const rect = u.over.getBoundingClientRect();
    const px = rect.left + window.scrollX + u.valToPos(u.data[hit.series][0][hit.index], "x");
    const py = rect.top + window.scrollY + u.valToPos(u.data[hit.series][1][hit.index], "y");
    tip.hidden = false;
    tip.style.left = px + 14 + "px";
    tip.style.top = py + 14 + "px";
    tip.style.borderColor = model.colour.get(model.groupOf[i]);
    const marker = parts.marker;
    marker.hidden = false;
    marker.style.left = px - 5 + "px";
    marker.style.top = py - 5 + "px";
    marker.style.borderColor = tip.style.borderColor;
  }

  function hideTooltip() {
    parts.tooltip.hidden = true;
    parts.marker.hidden = true;
  }

  // Selected tasks drawn again over the others, thicker.
  function highlight(u) {
    if (!view.selected.size) return;
    const ctx = u.ctx;
    ctx.save();
    ctx.lineWidth = 3 * uPlot.pxRatio;
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    for (const i of view.selected) {
      const s = i + 1;
      if (!u.series[s] || !u.series[s].show) continue;
      const [xs, ys] = u.data[s];
      ctx.strokeStyle = model.colour.get(model.groupOf[i]);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      let open = false;
      for (let j = 0; j < xs.length; j++) {
        if (ys[j] == null || xs[j] == null) { open = false; continue; }
        const x = u.valToPos(xs[j], "x", true), y = u.valToPos(ys[j], "y", true);
        if (open) ctx.lineTo(x, y); else { ctx.moveTo(x, y); open = true; }
        if (xs.length === 1) ctx.fillRect(x - 3 * uPlot.pxRatio, y - 3 * uPlot.pxRatio, 6 * uPlot.pxRatio, 6 * uPlot.pxRatio);
      }
      ctx.stroke();
    }
    ctx.restore();
  }

  function drawLegend() {
    parts.legend.textContent = "";
    const count = new Map();
    for (const g of model.groupOf) count.set(g, (count.get(g) || 0) + 1);
    for (const g of model.groups) {
      const button = el("button", { type: "button", class: "ex-group", "aria-pressed": String(!view.hidden.has(g)) },
        el("span", { class: "ex-swatch" }), g, el("b", { text: String(count.get(g)) }));
      button.firstChild.style.background = model.colour.get(g);
      button.dataset.group = g;
      button.addEventListener("click", () => toggleGroup(g, button));
      parts.legend.append(button);
    }
  }

  function toggleGroup(group, button) {
    const shown = view.hidden.has(group);
    if (shown) view.hidden.delete(group); else view.hidden.add(group);
    button.setAttribute("aria-pressed", String(shown));
    for (const chart of Object.values(charts)) {
      chart.batch(() => {
        for (let i = 0; i < model.n; i++) if (model.groupOf[i] === group) chart.setSeries(i + 1, { show: shown });
      });
    }
    hideTooltip();
  }

  function toggleSelected(i) {
    if (view.selected.has(i)) view.selected.delete(i); else view.selected.add(i);
    for (const row of parts.table.tBodies[0].rows) row.classList.toggle("selected", view.selected.has(Number(row.dataset.index)));
    Object.values(charts).forEach((c) => c.redraw(false, false));
  }

  // -- BLEU / ROUGE by group (SVG bars with standard errors) -----------------------------------------------------
  function drawCompare() {
    const cmp = model.doc.compare;
    const by = model.doc.by;
    parts.compare.textContent = "";
    const rows = (cmp.tasks || []).map((_, r) => r).filter((r) => METRICS.some(([m]) => cmp[m + "_count"][r] > 0));
    if (!rows.length) {
      parts.compare.append(el("p", { class: "empty", text: "No task has reported BLEU or ROUGE yet (they arrive when a task is Done)." }));
      return;
    }
    const label = (r) => by.map((c) => show(cmp[c][r])).join(" · ");
    const barH = 10, gap = 8, labelW = 300, chartW = 560, top = 24;
    const groupH = METRICS.length * barH + gap;
    let max = 0;
    for (const r of rows) for (const [m] of METRICS) max = Math.max(max, (cmp[m + "_mean"][r] || 0) + stderr(cmp, m, r));
    max = max || 1;
    const height = top + rows.length * groupH + 10;
    const chart = svg("svg", { width: labelW + chartW + 60, height, class: "ex-bars", role: "img" });
    METRICS.forEach(([, title], k) => {
      const x = labelW + k * 110;
      chart.append(svg("rect", { x, y: 6, width: 10, height: 10, fill: PALETTE[k] }));
      const t = svg("text", { x: x + 14, y: 15 }); t.textContent = title; chart.append(t);
    });
    rows.forEach((r, g) => {
      const y0 = top + g * groupH;
      const name = svg("text", { x: labelW - 8, y: y0 + groupH / 2, "text-anchor": "end", class: "ex-bar-label" });
      name.textContent = label(r) + " (n = " + cmp.tasks[r] + ")";
      chart.append(name);
      METRICS.forEach(([m, title], k) => {
        const mean = cmp[m + "_mean"][r];
        if (mean == null) return;
        const y = y0 + k * barH;
        const w = (mean / max) * chartW;
        const bar = svg("rect", { x: labelW, y, width: Math.max(w, 1), height: barH - 3, fill: PALETTE[k], class: "ex-bar" });
        const se = stderr(cmp, m, r);
        bar.addEventListener("mousemove", (event) => tooltipAt(event, [
          ["Group", label(r)], ["Metric", title], ["Mean", num(mean, 2)],
          ["Std", num(cmp[m + "_std"][r], 2)], ["Tasks with a value", String(cmp[m + "_count"][r])],
        ]));
        bar.addEventListener("mouseleave", hideTooltip);
        chart.append(bar);
        if (se) {
          const cx = labelW + w, cy = y + (barH - 3) / 2, half = (se / max) * chartW;
          chart.append(svg("line", { x1: cx - half, x2: cx + half, y1: cy, y2: cy, class: "ex-err" }));
        }
      });
    });
    parts.compare.append(chart, el("p", { class: "lead", text: "Mean over the tasks of each group that reported " +
      "the metric; whiskers are standard errors. Hover a bar for its values." }));
  }

  function stderr(cmp, m, r) {
    const std = cmp[m + "_std"][r], n = cmp[m + "_count"][r];
    return std != null && n > 1 ? std / Math.sqrt(n) : 0;
  }

  function tooltipAt(event, lines) {
    const tip = parts.tooltip;
    tip.textContent = "";
    delete tip.dataset.task;
    parts.marker.hidden = true;
    for (const [label, value] of lines) tip.append(el("div", {}, el("span", { class: "ex-k", text: label }), " ", el("span", { class: "ex-v", text: value })));
    tip.hidden = false;
    tip.style.borderColor = "";
    tip.style.left = event.pageX + 12 + "px";
    tip.style.top = event.pageY + 12 + "px";
  }

  // -- status timeline (SVG) -------------------------------------------------------------------------------------
  function drawTimeline() {
    const tl = model.doc.timeline;
    parts.timeline.textContent = "";
    if (!tl.task.length) {
      parts.timeline.append(el("p", { class: "empty", text: "No status changes yet." }));
      return;
    }
    const now = config.live ? Date.now() : model.doc.generated;
    const terminal = new Set(model.doc.terminal);
    const rows = new Map(); // task -> first start, in order of first start
    let min = Infinity, max = -Infinity;
    for (let k = 0; k < tl.task.length; k++) {
      if (tl.task[k] < 0) continue;
      if (!rows.has(tl.task[k])) rows.set(tl.task[k], tl.start[k]);
      min = Math.min(min, tl.start[k]);
      max = Math.max(max, tl.end[k] ?? (terminal.has(tl.status[k]) ? tl.start[k] : now));
    }
    if (max <= min) max = min + 1000;
    const order = Array.from(rows.keys()).sort((a, b) => rows.get(a) - rows.get(b) || a - b);
    const rowOf = new Map(order.map((t, r) => [t, r]));
    const labelW = 300, chartW = 640, rowH = 14, top = 20;
    const chart = svg("svg", { width: labelW + chartW + 20, height: top + order.length * rowH + 24, class: "ex-gantt", role: "img" });
    const x = (ms) => labelW + ((ms - min) / (max - min)) * chartW;
    Object.entries(STATUS_COLOURS).forEach(([status, colour], k) => {
      chart.append(svg("rect", { x: labelW + k * 100, y: 4, width: 10, height: 10, fill: colour }));
      const t = svg("text", { x: labelW + k * 100 + 14, y: 13 }); t.textContent = status; chart.append(t);
    });
    order.forEach((task, r) => {
      const t = svg("text", { x: labelW - 8, y: top + r * rowH + 10, "text-anchor": "end", class: "ex-bar-label" });
      t.textContent = show(model.runs.job_name[task]) + " · " + model.runs.task_id[task];
      chart.append(t);
    });
    for (let k = 0; k < tl.task.length; k++) {
      const task = tl.task[k];
      if (task < 0) continue;
      const status = show(tl.status[k]);
      const end = tl.end[k] ?? (terminal.has(status) ? null : now);
      const y = top + rowOf.get(task) * rowH;
      const shape = end == null
        ? svg("circle", { cx: x(tl.start[k]), cy: y + 6, r: 4, fill: STATUS_COLOURS[status] || "#888" })
        : svg("rect", { x: x(tl.start[k]), y: y + 1, width: Math.max(x(end) - x(tl.start[k]), 1.5), height: rowH - 3,
          fill: STATUS_COLOURS[status] || "#888" });
      shape.setAttribute("class", "ex-stretch");
      shape.addEventListener("mousemove", (event) => tooltipAt(event, [
        ["Task", model.runs.task_id[task]], ["Job", show(model.runs.job_name[task])], ["Status", status],
        ["From", time(tl.start[k])], ["Until", end == null ? "(end state)" : tl.end[k] == null ? "now" : time(end)],
        ["For", end == null ? dash : duration((end - tl.start[k]) / 1000)],
      ]));
      shape.addEventListener("mouseleave", hideTooltip);
      chart.append(shape);
    }
    const axis = svg("text", { x: labelW, y: top + order.length * rowH + 16 }); axis.textContent = time(min);
    const axisEnd = svg("text", { x: labelW + chartW, y: top + order.length * rowH + 16, "text-anchor": "end" });
    axisEnd.textContent = time(max);
    chart.append(axis, axisEnd);
    parts.timeline.append(el("div", { class: "ex-scroll" }, chart));
  }

  // -- runs table ------------------------------------------------------------------------------------------------
  const COLUMNS = [
    ["job_name", "Job", "text"], ["task_id", "Task", "text"], ["model", "Model", "text"],
    ["train_mode", "Train mode", "text"], ["parameter_scale", "Scale", "text"], ["run_status", "Status", "text"],
    ["run_progress", "Progress", "pct"], ["checkpoints", "Checkpoints", "int"], ["last_step", "Last step", "int"],
    ["final_loss", "Final loss", "f4"], ["best_loss", "Best loss", "f4"], ["best_step", "Best step", "int"],
    ["bleu_4", "BLEU-4", "f2"], ["rouge_l", "ROUGE-L", "f2"], ["observed_at", "Last change (UTC)", "time"],
  ];
  function cell(i, column) {
    return column in model.summary[0] ? model.summary[i][column] : model.runs[column][i];
  }
  function formatted(value, kind) {
    if (kind === "text") return show(value);
    if (kind === "pct") return value == null ? dash : num(value, 1) + "%";
    if (kind === "int") return num(value, 0);
    if (kind === "f4") return num(value, 4);
    if (kind === "f2") return num(value, 2);
    return value == null ? dash : time(value).slice(0, 19);
  }

  function drawTable() {
    const table = parts.table;
    table.textContent = "";
    if (!model.n) { parts.empty.textContent = "No tasks yet."; return; }
    parts.empty.textContent = "";
    const head = el("tr");
    for (const [column, title, kind] of COLUMNS) {
      const th = el("th", { class: kind === "text" || kind === "time" ? "" : "num", scope: "col", "data-column": column },
        el("button", { type: "button", text: title }));
      if (view.sort[0] === column) th.setAttribute("aria-sort", view.sort[1] > 0 ? "ascending" : "descending");
      th.firstChild.addEventListener("click", () => {
        view.sort = [column, view.sort[0] === column ? -view.sort[1] : 1];
        drawTable();
      });
      head.append(th);
    }
    table.append(el("thead", {}, head));
    const [column, direction] = view.sort;
    const kind = COLUMNS.find((c) => c[0] === column)[2];
    const order = Array.from({ length: model.n }, (_, i) => i);
    order.sort((a, b) => {
      const va = cell(a, column), vb = cell(b, column);
      if (va == null || vb == null) return va == null ? (vb == null ? a - b : 1) : -1; // missing values last
      const diff = kind === "text" ? String(va).localeCompare(String(vb)) : va - vb;
      return diff * direction || a - b;
    });
    const body = el("tbody");
    let shown = 0;
    for (const i of order) {
      if (view.filter && !matches(i, view.filter)) continue;
      shown++;
      const row = el("tr", { "data-index": String(i), "data-task": model.runs.task_id[i] });
      if (view.selected.has(i)) row.classList.add("selected");
      for (const [c, , k] of COLUMNS) {
        const td = el("td", { class: k === "text" || k === "time" ? "" : "num" });
        if (c === "job_name") {
          const swatch = el("span", { class: "ex-swatch" });
          swatch.style.background = model.colour.get(model.groupOf[i]);
          td.append(swatch);
        }
        if (c === "run_status" && model.runs.run_status[i] != null) {
          td.append(el("span", { class: "badge status-" + String(model.runs.run_status[i]).toLowerCase(), text: show(model.runs.run_status[i]) }));
        } else {
          td.append(formatted(cell(i, c), k));
        }
        row.append(td);
      }
      row.addEventListener("click", () => toggleSelected(i));
      body.append(row);
    }
    table.append(body);
    parts.shown.textContent = shown + " of " + model.n + " runs" + (view.selected.size ? " · " + view.selected.size + " selected (click a row again to clear)" : " · click a row to highlight its curves");
  }

  function matches(i, text) {
    const runs = model.runs;
    return ["job_name", "task_id", "job_id", "model", "train_mode", "parameter_scale", "run_status"]
      .some((c) => runs[c][i] != null && String(runs[c][i]).toLowerCase().includes(text));
  }

  // -- rendering and live refresh ----------------------------------------------------------------------------------
  function render(doc) {
    const keep = model ? new Set(Array.from(view.selected, (i) => model.runs.task_id[i])) : new Set();
    model = derive(doc);
    view.selected = new Set();
    model.runs.task_id.forEach((t, i) => { if (keep.has(t)) view.selected.add(i); });
    drawHeader();
    drawLegend();
    drawCurves();
    drawCompare();
    drawTimeline();
    drawTable();
    root.dataset.tasks = String(model.n);
    root.dataset.ready = "true";
  }

  async function refresh() {
    try {
      const answer = await fetch("api/version", { cache: "no-store" });
      const latest = (await answer.json()).version;
      if (latest !== version) {
        const doc = await (await fetch("api/report", { cache: "no-store" })).json();
        version = latest;
        render(doc);
      } else if (model) {
        drawHeader();
      }
      root.classList.remove("ex-offline");
    } catch (error) {
      root.classList.add("ex-offline");
      parts.updated.textContent = "Cannot reach ftlog serve (" + error.message + "); retrying…";
    }
    setTimeout(refresh, config.poll_ms || 2000);
  }

  // For scripts and tests: where a task's checkpoint is drawn, and what each chart shows.
  window.ftlogExplore = {
    point(chart, task, step) {
      const u = charts[chart];
      const i = model.runs.task_id.indexOf(task);
      const a = model.curves.offsets[i];
      const index = model.curves.step.slice(a, model.curves.offsets[i + 1]).indexOf(step);
      if (i < 0 || index < 0) return null;
      const rect = u.over.getBoundingClientRect();
      return { x: rect.left + u.valToPos(u.data[i + 1][0][index], "x"), y: rect.top + u.valToPos(u.data[i + 1][1][index], "y") };
    },
    shownTasks(chart) {
      return charts[chart].series.slice(1).filter((s) => s.show).map((s) => s.label);
    },
    tasks: () => (model ? model.runs.task_id.slice() : []),
    scales(chart) {
      const u = charts[chart];
      return { x: [u.scales.x.min, u.scales.x.max], y: [u.scales.y.min, u.scales.y.max], log: u.scales.y.distr === 3 };
    },
    selected: () => Array.from(view.selected, (i) => model.runs.task_id[i]),
    drawn(chart, task) {
      const [xs, ys] = charts[chart].data[model.runs.task_id.indexOf(task) + 1];
      return { x: Array.from(xs), y: Array.from(ys) };
    },
  };

  skeleton();
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      const holder = document.getElementById("ex-chart-" + name);
      chart.setSize({ width: Math.max(320, holder.clientWidth), height: 340 });
    }
  });
  if (config.live) refresh();
  else render(readJson("ftlog-data"));
})();
