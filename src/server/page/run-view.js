// The page's selected run: its facts, progress bar and cancel button.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ run view
var view = document.getElementById("run-view");
var statusEl = document.getElementById("run-status");
var cancellingEl = document.getElementById("run-cancelling");
var cancelBtn = document.getElementById("cancel");
var connEl = document.getElementById("conn-state");
var downloadEl = document.getElementById("download");
var progressEl = document.getElementById("progress");
var progressFill = progressEl.querySelector(".fill");
var progressText = document.getElementById("progress-text");
var logEl = document.getElementById("log");
var logNote = document.getElementById("log-note");
var logCount = document.getElementById("log-count");
var jumpBtn = document.getElementById("jump");
var showTs = document.getElementById("show-ts");
var autoScrollBox = document.getElementById("autoscroll");

var current = { id: null };

function resetCurrent(id) {
  if (current.es) { try { current.es.close(); } catch (e) {} }
  if (current.retryTimer) clearTimeout(current.retryTimer);
  current = {
    id: id,
    es: null,
    retryTimer: null,
    complete: false,         // the stream said `complete`, or the run is known finished
    lastSeq: -1,             // highest seq rendered (de-duplication, resume)
    firstSeq: null,          // lowest seq received
    run: null,
    lines: [],               // the model: line objects, oldest first (at most MAX_LINES)
    hidden: 0,               // lines dropped from the view
    open: Object.create(null), // stream -> line object that the next entry may replace/continue
    pendingRemove: [],       // DOM nodes of dropped lines
    dirty: [],               // line objects whose DOM needs creating or updating
    frame: 0,
    gaps: 0,
    progressFromLog: null,   // progress read from the log (tqdm-like lines)
    progressFromStatus: null,
    gpu: null,
    lastStatus: null,
    manualRestarts: 0,
    dupes: 0                 // log events ignored because their seq was already shown
  };
}
resetCurrent(null);

function setConn(state, text) {
  connEl.setAttribute("data-state", state);
  connEl.textContent = text || state;
}

function openRun(id, initialRun) {
  if (!id) return;
  if (current.id === id && (current.es || current.complete || current.retryTimer)) return;
  resetCurrent(id);
  view.classList.remove("hidden");
  view.setAttribute("data-run-id", id);
  document.getElementById("run-title").textContent = "Run";
  document.getElementById("run-id").textContent = id;
  logEl.textContent = "";
  logEl.appendChild(el("div", { "class": "placeholder" }, "Waiting for output…"));
  logNote.classList.add("hidden");
  logNote.textContent = "";
  logCount.textContent = "";
  stick = true;
  jumpBtn.classList.add("hidden");
  downloadEl.href = withToken("/api/runs/" + encodeURIComponent(id) + "/logs/download");
  downloadEl.setAttribute("download", id + ".log");
  setProgress(null);
  document.getElementById("run-gpu").textContent = "—";
  statusEl.textContent = "";
  statusEl.setAttribute("data-status", "");
  cancelBtn.disabled = true;
  Object.keys(rows).forEach(function (rid) { rows[rid].setAttribute("aria-current", rid === id ? "true" : "false"); });
  try { history.replaceState(null, "", location.pathname + location.search + "#run=" + encodeURIComponent(id)); } catch (e) {}
  if (initialRun) applyRun(initialRun, false);
  api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (run) {
    if (current.id === id && run) applyRun(run, false);
  }).catch(function (e) {
    if (current.id === id && e.status === 404) { setConn("error", "run not found"); }
  });
  chartsReset(id);
  chartsLoad(id);
  connect(null);
}

// Apply a Run object (from a status event, a poll or a fetch).
function applyRun(run, fromEvent) {
  if (!run || run.run_id && run.run_id !== current.id) return;
  var prev = current.run;
  // Answers from polls and fetches can be older than the stream's news: a run never goes
  // back (queued -> running -> finished), and a stop once asked for stays asked for.
  if (prev && rank(run.status) < rank(prev.status)) return;
  if (prev && prev.cancelling && run.cancelling === false && !FINISHED[run.status] && rank(run.status) === rank(prev.status)) {
    run = Object.assign({}, run, { cancelling: true });
  }
  current.run = Object.assign({}, prev || {}, run);
  run = current.run;
  setBadge(statusEl, run.status, run.cancelling, true);
  cancellingEl.classList.toggle("hidden", !(run.cancelling && !FINISHED[run.status]));
  document.getElementById("run-title").textContent = run.module_name || run.module_id || "Run";
  document.getElementById("run-module").textContent = (run.module_name || "") + (run.module_id ? " (" + run.module_id + ")" : "");
  document.getElementById("run-started").textContent = fmtTime(run.started_at || run.created_at);
  document.getElementById("run-duration").textContent = fmtDuration(run.duration_seconds);
  document.getElementById("run-exit").textContent = fmtExit(run);
  document.getElementById("run-pid").textContent = run.pid !== null && run.pid !== undefined ? String(run.pid) : "—";
  var p = run.parameters || {};
  var keys = Object.keys(p);
  document.getElementById("run-params").textContent = keys.length
    ? keys.map(function (k) { return k + "=" + JSON.stringify(p[k]); }).join(", ") : "—";
  if (run.gpu_memory_bytes !== null && run.gpu_memory_bytes !== undefined && !current.gpu) {
    document.getElementById("run-gpu").textContent = fmtBytes(run.gpu_memory_bytes);
  }
  var errBox = document.getElementById("run-error");
  if (run.error_message && FINISHED[run.status] && run.status !== "completed") {
    errBox.textContent = run.error_message;
    errBox.classList.remove("hidden");
  } else {
    errBox.classList.add("hidden");
  }
  var finished = !!FINISHED[run.status];
  cancelBtn.disabled = finished || !!run.cancelling;
  cancelBtn.textContent = run.cancelling && !finished ? "Cancelling…" : "Cancel run";
  if (typeof run.progress_percent === "number") current.progressFromStatus = run.progress_percent;
  updateProgress();

  var key = run.status + (run.cancelling ? "+cancelling" : "");
  if (current.lastStatus !== null && current.lastStatus !== key) {
    announce("Run " + (run.module_name || run.module_id || "") + " is now " +
      (run.cancelling && !finished ? "cancelling" : statusWord(run.status)) + ".");
  }
  current.lastStatus = key;
  if (rows[run.run_id]) fillRow(rows[run.run_id], run);
}

// A poll of /api/runs saw the open run: keep durations fresh, and notice a finish the
// stream could not tell us about (e.g. while disconnected).
function mergeRunFromPoll(run) {
  applyRun(run, "poll");
  if (FINISHED[run.status] && !current.complete && !current.es) catchUpFinished(current.id);
}

function setProgress(value) {
  if (value === null || value === undefined || isNaN(value)) {
    progressEl.setAttribute("data-known", "false");
    progressEl.removeAttribute("aria-valuenow");
    progressEl.setAttribute("aria-valuetext", "unknown");
    progressFill.style.width = "0%";
    progressText.textContent = "—";
    return;
  }
  var v = Math.max(0, Math.min(100, value));
  var shown = Math.round(v * 10) / 10;
  progressEl.setAttribute("data-known", "true");
  progressEl.setAttribute("aria-valuenow", String(shown));
  progressEl.setAttribute("aria-valuetext", shown + "%");
  progressFill.style.width = v + "%";
  progressText.textContent = shown + "%";
}
function updateProgress() {
  // The log tells us about every update; the server's value (from status events and polls)
  // covers what this page did not see (older lines, lines mentioning "progress").
  var v = current.progressFromLog !== null ? current.progressFromLog : current.progressFromStatus;
  setProgress(v);
}

cancelBtn.addEventListener("click", function () {
  var id = current.id;
  if (!id) return;
  cancelBtn.disabled = true;
  cancelBtn.textContent = "Cancelling…";
  api("POST", "/api/runs/" + encodeURIComponent(id) + "/cancel").then(function (run) {
    if (current.id === id) applyRun(run, false);
    pollRuns();
  }).catch(function (e) {
    if (current.id !== id) return;
    if (e.code === "INVALID_STATE") {
      announce("The run had already finished.");
    } else {
      showGlobalError("Cancel failed: " + (e.detail || e.message));
      setTimeout(function () { showGlobalError(""); }, 6000);
    }
    api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (run) { if (current.id === id) applyRun(run, false); })
      .catch(function () { cancelBtn.disabled = false; cancelBtn.textContent = "Cancel run"; });
  });
});
