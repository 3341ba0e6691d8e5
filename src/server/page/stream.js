// The selected run's SSE stream: connect, resume after a drop, catch up a finished run.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ the stream
function connect(afterSeq) {
  var id = current.id;
  var url = "/api/runs/" + encodeURIComponent(id) + "/logs/stream";
  // First connection: everything the server retains (the view keeps the last MAX_LINES).
  // EventSource's own reconnects send Last-Event-ID; our manual ones (after the browser
  // gave up) ask for what follows the last seq we rendered.
  if (afterSeq !== null && afterSeq >= 0) url += "?after_seq=" + afterSeq;
  url = withToken(url);
  setConn(current.lastSeq >= 0 || current.manualRestarts ? "reconnecting" : "connecting",
          current.lastSeq >= 0 || current.manualRestarts ? "reconnecting…" : "connecting…");
  var es = new EventSource(url);
  current.es = es;

  es.onopen = function () {
    if (current.es !== es) return;
    setConn("live", "live");
  };
  es.onerror = function () {
    if (current.es !== es) return;
    if (current.complete) { es.close(); current.es = null; return; }
    if (es.readyState === EventSource.CONNECTING) {
      setConn("reconnecting", "reconnecting…");
      return;
    }
    // CLOSED: the browser gave up (HTTP 204 for a finished run, 401, 404, 503...).
    es.close();
    current.es = null;
    setConn("reconnecting", "reconnecting…");
    api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (run) {
      if (current.id !== id) return;
      applyRun(run, false);
      if (FINISHED[run.status]) {
        catchUpFinished(id);
      } else {
        scheduleManualReconnect(id);
      }
    }).catch(function (e) {
      if (current.id !== id) return;
      if (e.status === 401) { setConn("error", "not authorised"); return; }
      if (e.status === 404) { setConn("error", "run not found"); return; }
      scheduleManualReconnect(id);
    });
  };
  es.addEventListener("log", function (ev) {
    if (current.es !== es) return;
    var entry;
    try { entry = JSON.parse(ev.data); } catch (e) { return; }
    if (connEl.getAttribute("data-state") !== "live") setConn("live", "live");
    pushEntry(entry);
  });
  es.addEventListener("metric", function (ev) {
    if (current.es !== es) return;
    var m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    chartsPush(m);
  });
  es.addEventListener("status", function (ev) {
    if (current.es !== es) return;
    var run;
    try { run = JSON.parse(ev.data); } catch (e) { return; }
    if (connEl.getAttribute("data-state") !== "live") setConn("live", "live");
    applyRun(run, true);
  });
  es.addEventListener("gap", function (ev) {
    if (current.es !== es) return;
    var g;
    try { g = JSON.parse(ev.data); } catch (e) { return; }
    pushGap(g);
  });
  es.addEventListener("gpu", function (ev) {
    if (current.es !== es) return;
    var g;
    try { g = JSON.parse(ev.data); } catch (e) { return; }
    current.gpu = g;
    // null: the driver does not attribute memory to processes here (see /api/gpu).
    var t = g.gpu_memory_bytes === null ? "unknown" : fmtBytes(g.gpu_memory_bytes);
    if (g.gpu_utilization_percent !== null && g.gpu_utilization_percent !== undefined) t += ", SM " + g.gpu_utilization_percent + "%";
    if (g.gpu_memory_peak_bytes !== null && g.gpu_memory_peak_bytes !== undefined) t += " (peak " + fmtBytes(g.gpu_memory_peak_bytes) + ")";
    document.getElementById("run-gpu").textContent = t;
  });
  es.addEventListener("complete", function (ev) {
    if (current.es !== es) return;
    es.close();              // else EventSource would reconnect
    current.es = null;
    var c = {};
    try { c = JSON.parse(ev.data) || {}; } catch (e) {}
    var patch = { run_id: id, status: c.status, cancelling: false };
    if ("exit_code" in c) patch.exit_code = c.exit_code;
    if ("signal" in c) patch.signal = c.signal;
    if ("duration_seconds" in c) patch.duration_seconds = c.duration_seconds;
    if (c.status) applyRun(patch, true);
    finishStream();
    // The final Run (completed_at, error_message...).
    api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (run) {
      if (current.id === id) applyRun(run, false);
    }).catch(function () {});
    pollRuns();
  });
}

function scheduleManualReconnect(id) {
  if (current.retryTimer) clearTimeout(current.retryTimer);
  current.manualRestarts++;
  var delay = Math.min(10000, 1000 * Math.pow(2, Math.min(current.manualRestarts, 4)));
  current.retryTimer = setTimeout(function () {
    current.retryTimer = null;
    if (current.id !== id || current.complete || current.es) return;
    connect(current.lastSeq);
  }, delay);
}

// The run finished while we were not connected: fetch what we missed, then stop.
function catchUpFinished(id) {
  if (current.catchingUp) return;
  current.catchingUp = true;
  if (current.retryTimer) { clearTimeout(current.retryTimer); current.retryTimer = null; }
  // The newest MAX_LINES entries (what the view can show); older ones we missed are in the
  // full log, and a note says so.
  api("GET", "/api/runs/" + encodeURIComponent(id) + "/logs?tail=" + MAX_LINES).then(function (data) {
    if (current.id !== id) return;
    var logs = data && data.logs || [];
    if (logs.length && current.lastSeq >= 0 && logs[0].seq > current.lastSeq + 1) {
      var skipped = logs[0].seq - current.lastSeq - 1;
      var line = { seq: null, marker: true, node: null, el: null,
                   text: "… " + skipped + " lines not shown here (download the full log) …" };
      current.lines.push(line);
      markDirty(line);
    }
    logs.forEach(pushEntry);
  }).catch(function () {}).then(function () {
    if (current.id === id) finishStream();
  });
}

function finishStream() {
  current.complete = true;
  if (current.es) { current.es.close(); current.es = null; }
  if (current.retryTimer) { clearTimeout(current.retryTimer); current.retryTimer = null; }
  for (var s in current.open) { if (current.open[s]) { current.open[s].live = false; markDirty(current.open[s]); } }
  current.open = Object.create(null);
  // Draw what is still queued now, so "finished" never shows over a log missing its end.
  if (current.frame) cancelAnimationFrame(current.frame);
  render();
  setConn("finished", "finished");
  // Values sent while this page was not connected (it gave up and caught up) are in the
  // run's series; otherwise the charts already hold every value, unthinned.
  if (charts && charts.id === current.id && (current.manualRestarts || current.catchingUp)) chartsLoad(current.id);
  cancelBtn.disabled = true;
  if (!current.lines.length) schedule();
}
