// The page's runs table, refreshed by polling /api/runs.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ runs table
var runsBody = document.querySelector("#runs tbody");
var runsEmpty = document.getElementById("runs-empty");
var runsCount = document.getElementById("runs-count");
var runsError = document.getElementById("runs-error");
var filterEl = document.getElementById("status-filter");
var rows = Object.create(null);   // run_id -> tr
var pollTimer = null, pollInFlight = false;

function makeRow(run) {
  var tr = el("tr", { "data-run-id": run.run_id });
  tr.appendChild(el("td", { "data-col": "status" }));
  var mod = el("td", { "data-col": "module" });
  tr.appendChild(mod);
  tr.appendChild(el("td", { "data-col": "started" }));
  tr.appendChild(el("td", { "data-col": "duration", "class": "num" }));
  tr.appendChild(el("td", { "data-col": "exit", "class": "num" }));
  tr.appendChild(el("td", { "data-col": "gpu", "class": "num" }));
  var tdBtn = el("td", { "data-col": "open" });
  var btn = el("button", { type: "button", "class": "secondary", "data-action": "open" }, "Open");
  btn.setAttribute("aria-label", "Open run " + run.run_id);
  tdBtn.appendChild(btn);
  tr.appendChild(tdBtn);
  tr.addEventListener("click", function () { openRun(run.run_id); });
  return tr;
}

function fillRow(tr, run) {
  tr.setAttribute("data-status", run.status || "");
  var c = tr.children;
  var badge = c[0].firstChild;
  if (!badge) { badge = el("span"); c[0].appendChild(badge); }
  setBadge(badge, run.status, run.cancelling);
  if (!c[1].firstChild) {
    c[1].appendChild(el("div", null, run.module_name || run.module_id));
    c[1].appendChild(el("div", { "class": "rid", title: run.run_id }, run.run_id));
  }
  c[2].textContent = fmtTime(run.started_at || run.created_at);
  c[3].textContent = fmtDuration(run.duration_seconds);
  c[4].textContent = fmtExit(run);
  c[5].textContent = fmtBytes(run.gpu_memory_bytes);
  tr.setAttribute("aria-current", run.run_id === current.id ? "true" : "false");
}

function upsertRunRow(run, atTop) {
  var tr = rows[run.run_id];
  if (!tr) {
    tr = rows[run.run_id] = makeRow(run);
    if (atTop) runsBody.insertBefore(tr, runsBody.firstChild); else runsBody.appendChild(tr);
  }
  fillRow(tr, run);
  runsEmpty.classList.add("hidden");
}

function renderRuns(data) {
  var list = data && data.runs || [];
  var seen = Object.create(null);
  var order = [];
  list.forEach(function (run) {
    seen[run.run_id] = true;
    var tr = rows[run.run_id];
    if (!tr) tr = rows[run.run_id] = makeRow(run);
    fillRow(tr, run);
    order.push(tr);
    if (run.run_id === current.id) mergeRunFromPoll(run);
  });
  Object.keys(rows).forEach(function (id) {
    if (!seen[id]) { if (rows[id].parentNode) rows[id].parentNode.removeChild(rows[id]); delete rows[id]; }
  });
  // Reorder only when the order really changed, so a focused button keeps its focus.
  var same = runsBody.children.length === order.length;
  for (var i = 0; same && i < order.length; i++) if (runsBody.children[i] !== order[i]) same = false;
  if (!same) order.forEach(function (tr) { runsBody.appendChild(tr); });
  runsEmpty.classList.toggle("hidden", list.length > 0);
  runsEmpty.textContent = filterEl.value ? "No " + statusWord(filterEl.value) + " runs." : "No runs yet.";
  var total = data && typeof data.total === "number" ? data.total : list.length;
  runsCount.textContent = total > list.length ? list.length + " of " + total : total + (total === 1 ? " run" : " runs");
}

function pollRuns() {
  if (pollInFlight) return;
  pollInFlight = true;
  var q = "?limit=50&offset=0" + (filterEl.value ? "&status=" + encodeURIComponent(filterEl.value) : "");
  api("GET", "/api/runs" + q).then(function (data) {
    runsError.textContent = "";
    renderRuns(data);
  }).catch(function (e) {
    runsError.textContent = e.status === 401 ? "" : "(could not refresh: " + (e.message || e) + ")";
  }).then(function () { pollInFlight = false; });
}

filterEl.addEventListener("change", function () { pollRuns(); });
