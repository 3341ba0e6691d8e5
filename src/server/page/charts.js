// The page's metric charts: one uPlot chart per metric of the selected run, filled from
// GET /api/runs/{id}/metrics and then live from the stream's `metric` events (no polling);
// other runs of the same module can be overlaid to compare them.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
var MAX_CHART_POINTS = 200000;   // per curve; beyond, every other point goes (first and last stay)
var CHART_COLOURS = ["#0b5cad", "#c2410c", "#116329", "#7e22ce", "#a40e26", "#0e7490", "#7d4e00", "#be185d"];

var metricsEl = document.getElementById("metrics");
var chartsEl = document.getElementById("charts");
var compareEl = document.getElementById("compare");
var metricsNote = document.getElementById("metrics-note");

// charts: run_id of the selected run, series by name, runs compared, the frame scheduled.
var charts = null;

function chartsReset(id) {
  if (charts) Object.keys(charts.series).forEach(function (n) { if (charts.series[n].plot) charts.series[n].plot.destroy(); });
  charts = { id: id, series: Object.create(null), order: [], compared: [], others: Object.create(null),
             throughSeq: null, queued: [], frame: 0, loads: 0 };
  chartsEl.textContent = "";
  compareEl.textContent = "";
  metricsEl.classList.add("hidden");
}

// The selected run's series from the API; events that came first wait in `queued`.
function chartsLoad(id) {
  var loadNo = ++charts.loads;
  api("GET", "/api/runs/" + encodeURIComponent(id) + "/metrics").then(function (data) {
    if (!charts || charts.id !== id || loadNo !== charts.loads) return;
    Object.keys(charts.series).forEach(function (n) { var s = charts.series[n]; s.x = []; s.y = []; s.lastSeq = -1; });
    (data.series || []).forEach(function (s) {
      var c = chartSeries(s.name);
      c.xName = s.x;
      c.x = s.points.map(function (p) { return p[0]; });
      c.y = s.points.map(function (p) { return p[1]; });
      c.last = s.last; c.min = s.min; c.max = s.max; c.lastSeq = s.last_seq;
    });
    charts.throughSeq = data.through_seq || 0;
    var queued = charts.queued;
    charts.queued = [];
    queued.forEach(chartsPush);
    chartsSchedule();
    loadCompareChoices();
  }).catch(function () {});
}

function chartSeries(name) {
  var c = charts.series[name];
  if (!c) {
    c = charts.series[name] = { name: name, xName: null, x: [], y: [], last: null, min: null, max: null,
                                lastSeq: -1, node: null, plot: null, dirty: true };
    charts.order.push(name);
  }
  return c;
}

// One `metric` event {name, x, y, seq} of the selected run.
function chartsPush(m) {
  if (!charts || typeof m.seq !== "number") return;
  if (charts.throughSeq === null) { charts.queued.push(m); return; }
  var c = charts.series[m.name];
  if (!c && m.seq < charts.throughSeq) return;       // in the loaded series already
  c = chartSeries(m.name);
  if (m.seq <= c.lastSeq) return;                      // seen (a replay or a resume)
  c.lastSeq = m.seq;
  c.last = m.y;
  c.min = c.min === null ? m.y : Math.min(c.min, m.y);
  c.max = c.max === null ? m.y : Math.max(c.max, m.y);
  // x never goes back (as on the server): such a point counts in last/min/max only.
  if (!c.x.length || m.x >= c.x[c.x.length - 1]) {
    c.x.push(m.x); c.y.push(m.y);
    if (c.x.length > MAX_CHART_POINTS) thin(c);
  }
  c.dirty = true;
  chartsSchedule();
}

function thin(c) {
  var x = [], y = [];
  for (var i = 0; i < c.x.length; i += 2) { x.push(c.x[i]); y.push(c.y[i]); }
  if (x[x.length - 1] !== c.x[c.x.length - 1]) { x.push(c.x[c.x.length - 1]); y.push(c.y[c.y.length - 1]); }
  c.x = x; c.y = y;
}

function chartsSchedule() {
  if (charts.frame) return;
  // Many events in a frame cost one redraw per chart; a background tab catches up later.
  charts.frame = requestAnimationFrame(chartsRender);
}

function fmtNum(v) {
  if (v === null || v === undefined) return "—";
  var a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(Math.round(v * 1e4) / 1e4);
}

// The label of each compared run: the parameters whose values differ between the runs.
function runLabels(runs) {
  var keys = Object.create(null);
  runs.forEach(function (r) { Object.keys(r.parameters || {}).forEach(function (k) { keys[k] = true; }); });
  var differing = Object.keys(keys).filter(function (k) {
    var first = JSON.stringify((runs[0].parameters || {})[k]);
    return runs.some(function (r) { return JSON.stringify((r.parameters || {})[k]) !== first; });
  });
  return runs.map(function (r) {
    var p = r.parameters || {};
    var text = differing.map(function (k) { return k + "=" + (typeof p[k] === "string" ? p[k] : JSON.stringify(p[k])); }).join(", ");
    return text || r.run_id.slice(-8);
  });
}

function chartsRender() {
  charts.frame = 0;
  var names = charts.order;
  metricsEl.classList.toggle("hidden", names.length === 0);
  var runs = [current.run || { run_id: charts.id, parameters: {} }].concat(charts.compared.map(function (id) { return charts.others[id].run; }));
  var labels = runLabels(runs);
  names.forEach(function (name) {
    var c = charts.series[name];
    if (!c.node) buildChart(c);
    c.node.querySelector(".last").textContent = "last " + fmtNum(c.last);
    c.node.querySelector(".range").textContent = "min " + fmtNum(c.min) + " · max " + fmtNum(c.max) + " · " + c.x.length + " points";
    var curves = [[c.x, c.y]];
    charts.compared.forEach(function (id) {
      var o = charts.others[id].series[name];
      curves.push(o ? [o.x, o.y] : [[], []]);
    });
    var key = labels.join("|") + "#" + curves.length;
    if (!c.plot || c.plotKey !== key) {
      if (c.plot) c.plot.destroy();
      c.plot = makePlot(c, labels, curves.length);
      c.plotKey = key;
      c.dirty = true;
    }
    if (c.dirty) {
      c.dirty = false;
      c.plot.setData(curves.length === 1 ? curves[0] : uPlot.join(curves));
    }
  });
}

function buildChart(c) {
  var box = el("figure", { "class": "chart", "data-metric": c.name });
  var head = el("figcaption");
  head.appendChild(el("strong", null, c.name));
  head.appendChild(el("span", { "class": "last" }));
  head.appendChild(el("span", { "class": "range muted" }));
  box.appendChild(head);
  var plotBox = el("div", { "class": "plot", role: "img", "aria-label": c.name + " chart" });
  box.appendChild(plotBox);
  chartsEl.appendChild(box);
  c.node = box;
}

function makePlot(c, labels, n) {
  var series = [{ label: c.xName || "x" }];
  for (var i = 0; i < n; i++) {
    series.push({ label: n > 1 ? labels[i] : c.name, stroke: CHART_COLOURS[i % CHART_COLOURS.length],
                  width: 1.5, spanGaps: true });
  }
  var plotBox = c.node.querySelector(".plot");
  plotBox.textContent = "";
  var width = Math.max(200, plotBox.clientWidth || 300);
  // The y axis as wide as its longest label (uPlot's default cuts 100,000 to 0,000).
  var yAxis = { size: function (u, values) {
    var longest = (values || []).reduce(function (m, v) { return Math.max(m, String(v).length); }, 1);
    return 24 + 7 * longest;
  } };
  return new uPlot({ width: width, height: 170, series: series, legend: { show: n > 1, live: false }, axes: [{}, yAxis],
                     scales: { x: { time: false } }, cursor: { drag: { x: true, y: false } } },
                   [[], []].concat(series.slice(2).map(function () { return []; })), plotBox);
}

// Other runs of the selected run's module, to overlay.
function loadCompareChoices() {
  var id = charts.id;
  var run = current.run;
  var known = run && run.module_id ? Promise.resolve(run) : api("GET", "/api/runs/" + encodeURIComponent(id));
  known.then(function (r) {
    run = r;
    return api("GET", "/api/runs?limit=20&module_id=" + encodeURIComponent(run.module_id));
  }).then(function (data) {
    if (!charts || charts.id !== id) return;
    var others = (data.runs || []).filter(function (r) { return r.run_id !== id; });
    compareEl.textContent = "";
    if (!others.length) return;
    compareEl.appendChild(el("span", { "class": "muted" }, "Compare with:"));
    var labels = runLabels([run].concat(others));
    others.forEach(function (r, i) {
      var box = el("input", { type: "checkbox", id: "cmp-" + r.run_id, "data-run-id": r.run_id });
      var label = el("label", { "for": "cmp-" + r.run_id, title: r.run_id });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + labels[i + 1] + " (" + statusWord(r.status) + ")"));
      box.addEventListener("change", function () { toggleCompare(r, box.checked); });
      compareEl.appendChild(label);
    });
  }).catch(function () {});
}

function toggleCompare(run, on) {
  var id = charts.id;
  charts.compared = charts.compared.filter(function (r) { return r !== run.run_id; });
  if (!on) { chartsSchedule(); return; }
  api("GET", "/api/runs/" + encodeURIComponent(run.run_id) + "/metrics").then(function (data) {
    if (!charts || charts.id !== id) return;
    var series = Object.create(null);
    (data.series || []).forEach(function (s) {
      series[s.name] = { x: s.points.map(function (p) { return p[0]; }), y: s.points.map(function (p) { return p[1]; }) };
    });
    charts.others[run.run_id] = { run: run, series: series };
    if (charts.compared.indexOf(run.run_id) < 0) charts.compared.push(run.run_id);
    Object.keys(charts.series).forEach(function (n) { charts.series[n].dirty = true; });
    chartsSchedule();
  }).catch(function () {});
}

// For tests and debugging: each chart's curves (points per curve) and last value.
function chartsState() {
  var out = {};
  if (!charts) return out;
  charts.order.forEach(function (n) {
    var c = charts.series[n];
    out[n] = { points: c.x.length, x: c.x.slice(), y: c.y.slice(), last: c.last,
               curves: c.plot ? c.plot.series.length - 1 : 0 };
  });
  return out;
}
