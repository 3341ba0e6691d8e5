// The page's log view: entries become line objects on arrival; the DOM follows once per
// frame.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ the log model
// Entries become line objects here (cheap, on arrival); the DOM follows once per frame.
function isProgressLike(text) { return text.length < 400 && PROGRESS_LIKE.test(text); }

// Terminal colour codes and cursor moves (ANSI CSI and OSC sequences) are not text; bidi
// controls could make shown text read backwards, so they are shown by name.
var ANSI = /\u001b(?:\[[0-?]*[ -\/]*[@-~]|\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|[@-Z\\-_])/g;
var BIDI = /[\u202a-\u202e\u2066-\u2069]/g;
function cleanText(text) {
  if (text.indexOf("\u001b") >= 0) text = text.replace(ANSI, "");
  return text.replace(BIDI, function (c) { return "<U+" + c.charCodeAt(0).toString(16).toUpperCase() + ">"; });
}

// A line's text, capped at MAX_LINE_CHARS (a 10 MB line would freeze the tab); `more`
// counts what is not kept.
function setText(line, text) {
  line.more = Math.max(0, text.length - MAX_LINE_CHARS);
  line.text = line.more ? text.slice(0, MAX_LINE_CHARS) : text;
}
function appendText(line, text) {
  if (line.more || line.text.length + text.length > MAX_LINE_CHARS) {
    var room = Math.max(0, MAX_LINE_CHARS - line.text.length);
    line.more = (line.more || 0) + text.length - room;
    line.text += text.slice(0, room);
  } else {
    line.text += text;
  }
}

function pushEntry(e) {
  if (typeof e.seq !== "number") return;
  if (e.seq <= current.lastSeq) { current.dupes++; return; }          // de-duplicate
  current.lastSeq = e.seq;
  if (current.firstSeq === null) {
    current.firstSeq = e.seq;
    if (e.seq > 0) current.hidden += e.seq;   // the stream started with the tail only
  }
  var stream = e.stream || "stdout";
  var end = e.end || "lf";
  var msg = e.message == null ? "" : cleanText(String(e.message));
  var prev = stream !== "system" ? current.open[stream] : null;
  var line = null;
  var keepLevel = false;
  if (prev && prev.el !== false) {
    if (prev.end === "cr") {
      // A progress update: whatever comes next draws over it (a terminal's \r). An empty
      // segment leaves the old text, as on a terminal. A bar that lands (its final `lf`
      // on stderr) keeps the progress line's level rather than turning into an "error".
      line = prev;
      keepLevel = msg === "" || isProgressLike(msg);
      if (msg !== "") setText(prev, msg);
    } else if (prev.end === "none") {
      if (msg === "") {
        line = prev; keepLevel = true;        // the rest of the line was empty
      } else if (end === "cr" || (isProgressLike(prev.text) && isProgressLike(msg))) {
        line = prev; setText(prev, msg);      // a redrawn progress line
      } else {
        line = prev; appendText(prev, msg);   // the rest of a partial line
      }
    }
  }
  if (line) {
    line.seq = e.seq;
    line.end = end;
    line.ts = e.timestamp;
    if (!keepLevel || !line.level) line.level = e.level || line.level;
    line.live = end === "cr" || end === "none";
    markDirty(line);
  } else {
    line = { seq: e.seq, firstSeq: e.seq, stream: stream, end: end, level: e.level || "INFO", text: "", more: 0,
             ts: e.timestamp, node: null, el: null, live: end === "cr" || end === "none" };
    setText(line, msg);
    current.lines.push(line);
    markDirty(line);
    // Trimmed for real before each frame; this only bounds memory while frames do not run.
    if (current.lines.length > MAX_LINES + 1000) trimLines();
  }
  // The server calls every stderr line an error unless it says otherwise; a progress bar
  // that tqdm draws on stderr (a partial or a redrawn line) is not one.
  if (line.level === "ERROR" && stream === "stderr" && (end !== "lf" || line.firstSeq !== line.seq) &&
      isProgressLike(line.text) && !/ERROR|EXCEPTION|CRITICAL|FATAL/i.test(line.text)) {
    line.level = "INFO";
  }
  if (stream !== "system") current.open[stream] = (end === "cr" || end === "none") ? line : null;
  // Progress: the last N% of a \r update, of the line it landed as, or of a line that says "progress".
  if (line.text.indexOf("%") >= 0 && (end === "cr" || end === "none" || line.firstSeq !== line.seq || /progress/i.test(line.text))) {
    var m = /(\d+(?:\.\d+)?)\s*%[^%]*$/.exec(line.text);
    if (m) {
      var v = parseFloat(m[1]);
      if (v >= 0 && v <= 100) { current.progressFromLog = v; current.progressDirty = true; }
    }
  }
  schedule();
}

function pushGap(g) {
  var from = g.from_seq, to = g.to_seq;
  var line = { seq: null, marker: true, text: "… entries " + from + "–" + to + " were lost (download the full log for everything the server kept) …",
               node: null, el: null };
  current.lines.push(line);
  current.gaps++;
  if (typeof to === "number" && to > current.lastSeq) current.lastSeq = to;
  markDirty(line);
  if (current.lines.length > MAX_LINES + 1000) trimLines();
  schedule();
}

function trimLines() {
  var extra = current.lines.length - MAX_LINES;
  if (extra <= 0) return;
  var dropped = current.lines.splice(0, extra);
  for (var i = 0; i < dropped.length; i++) {
    var l = dropped[i];
    if (l.node) current.pendingRemove.push(l.node);
    l.el = false;   // never touch it again
    if (!l.marker) current.hidden++;
    for (var s in current.open) if (current.open[s] === l) current.open[s] = null;
  }
}

function markDirty(line) {
  if (!line.dirtyMark) { line.dirtyMark = true; current.dirty.push(line); }
}

var fallbackTimer = 0;
function schedule() {
  if (current.frame) return;
  current.frame = requestAnimationFrame(render);
  // rAF does not run in background tabs; keep the model bounded and catch up later.
  if (!fallbackTimer) fallbackTimer = setTimeout(function () { fallbackTimer = 0; if (current.frame) { cancelAnimationFrame(current.frame); render(); } }, 1000);
}

function buildNode(line) {
  if (line.marker) {
    return el("div", { "class": "marker", role: "note" }, line.text);
  }
  var d = document.createElement("div");
  var ts = document.createElement("span"); ts.className = "ts";
  var tag = document.createElement("span"); tag.className = "tag";
  var msg = document.createElement("span"); msg.className = "msg";
  d.appendChild(ts); d.appendChild(tag); d.appendChild(msg);
  line.node = d;
  updateNode(line);
  return d;
}

function tagFor(line) {
  if (line.level === "CRITICAL" || line.level === "ERROR" || line.level === "WARNING") return "[" + line.level + "]";
  if (line.stream === "stderr") return "[stderr]";
  if (line.stream === "system") return "[system]";
  return "";
}

function updateNode(line) {
  var d = line.node;
  d.className = "line " + line.stream + " lvl-" + line.level + (line.live && line.end === "cr" ? " live-cr" : "");
  d.setAttribute("data-seq", String(line.seq));
  if (line.firstSeq !== line.seq) d.setAttribute("data-first-seq", String(line.firstSeq)); else d.removeAttribute("data-first-seq");
  d.setAttribute("data-stream", line.stream);
  d.setAttribute("data-end", line.end);
  d.setAttribute("data-level", line.level);
  d.children[0].textContent = tsText(line.ts);
  d.children[0].title = line.ts || "";
  d.children[1].textContent = tagFor(line);
  d.children[2].textContent = line.more
    ? line.text + " … (" + line.more + " more characters: download the full log)"
    : line.text;
}

function render() {
  current.frame = 0;
  if (fallbackTimer) { clearTimeout(fallbackTimer); fallbackTimer = 0; }
  var ph = logEl.querySelector(".placeholder");
  trimLines();
  if (current.pendingRemove.length) {
    for (var i = 0; i < current.pendingRemove.length; i++) {
      var n = current.pendingRemove[i];
      if (n.parentNode === logEl) logEl.removeChild(n);
    }
    current.pendingRemove = [];
  }
  if (current.dirty.length) {
    var frag = document.createDocumentFragment();
    for (var j = 0; j < current.dirty.length; j++) {
      var line = current.dirty[j];
      line.dirtyMark = false;
      if (line.el === false) continue;          // dropped before it was ever drawn
      if (!line.node) { frag.appendChild(buildNode(line)); line.el = true; }
      else if (!line.marker) updateNode(line);
    }
    current.dirty = [];
    if (frag.firstChild) {
      if (ph) { logEl.removeChild(ph); ph = null; }
      logEl.appendChild(frag);
    }
  }
  if (ph && current.complete && !current.lines.length) ph.textContent = "No output.";
  if (current.progressDirty) { current.progressDirty = false; updateProgress(); }
  // The note about hidden lines.
  if (current.hidden > 0) {
    if (logNote.classList.contains("hidden") || logNote.getAttribute("data-hidden") !== String(current.hidden)) {
      logNote.textContent = "";
      logNote.appendChild(document.createTextNode(current.hidden + " older lines hidden — "));
      var a = el("a", { href: downloadEl.href, download: current.id + ".log" }, "download the full log");
      logNote.appendChild(a);
      logNote.setAttribute("data-hidden", String(current.hidden));
      logNote.classList.remove("hidden");
    }
  }
  var n = current.lines.length;
  logCount.textContent = n + (current.hidden ? " lines shown, " + current.hidden + " hidden" : (n === 1 ? " line" : " lines"));
  if (stick && autoScrollBox.checked) logEl.scrollTop = logEl.scrollHeight;
}

// ------------------------------------------------------------------ scrolling + toggles
// Follow the output while the view is at the bottom; scrolling up pauses, scrolling back
// down (or "Jump to latest") resumes. Our own scrolls always land at the bottom.
var stick = true;
logEl.addEventListener("scroll", function () {
  var atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 24;
  stick = atBottom;
  jumpBtn.classList.toggle("hidden", atBottom || !autoScrollBox.checked);
});
jumpBtn.addEventListener("click", function () {
  stick = true;
  logEl.scrollTop = logEl.scrollHeight;
  jumpBtn.classList.add("hidden");
  logEl.focus();
});
autoScrollBox.addEventListener("change", function () {
  if (autoScrollBox.checked) { stick = true; logEl.scrollTop = logEl.scrollHeight; }
  jumpBtn.classList.add("hidden");
});
showTs.addEventListener("change", function () {
  logEl.classList.toggle("show-ts", showTs.checked);
  try { localStorage.setItem("runstream.showTs", showTs.checked ? "1" : "0"); } catch (e) {}
});
try { if (localStorage.getItem("runstream.showTs") === "1") { showTs.checked = true; logEl.classList.add("show-ts"); } } catch (e) {}
