// The page's API client (token, fetch with JSON errors), banners, and the formatting
// helpers every view uses.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ settings
var MAX_LINES = 2000;           // lines kept in the DOM
var MAX_LINE_CHARS = 10000;     // characters of one line shown; the download has the rest
var POLL_MS = 2000;             // runs table refresh
var FINISHED = { completed: 1, failed: 1, cancelled: 1, timed_out: 1 };
var PROGRESS_LIKE = /(\d+(?:\.\d+)?)\s*%/;

// ------------------------------------------------------------------ auth + fetch
var params = new URLSearchParams(location.search);
var TOKEN = params.get("token") || "";

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

function ApiError(status, body) {
  this.status = status;
  this.code = body && body.error_code || "";
  this.detail = body && body.detail || ("HTTP " + status);
  this.message = this.detail;
}
ApiError.prototype = Object.create(Error.prototype);

function api(method, path, body) {
  var headers = { "Accept": "application/json" };
  if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
  var init = { method: method, headers: headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(path, init).then(function (resp) {
    return resp.text().then(function (text) {
      var data = null;
      if (text) { try { data = JSON.parse(text); } catch (e) { data = { detail: text.slice(0, 300) }; } }
      if (!resp.ok) {
        var err = new ApiError(resp.status, data);
        if (resp.status === 401) showAuthError(err);
        throw err;
      }
      clearAuthError();
      return data;
    });
  });
}

var authEl = document.getElementById("auth-error");
function showAuthError() {
  authEl.textContent = "";
  var s = document.createElement("strong");
  s.textContent = TOKEN ? "The token was refused. " : "This server needs a token: ";
  authEl.appendChild(s);
  authEl.appendChild(document.createTextNode(TOKEN
    ? "Open the page with the right ?token=… in its address."
    : "open the page with ?token=… in its address (for example " + location.pathname + "?token=YOUR_TOKEN)."));
  authEl.classList.remove("hidden");
}
function clearAuthError() {
  if (!authEl.classList.contains("hidden")) authEl.classList.add("hidden");
}

var globalErr = document.getElementById("global-error");
function showGlobalError(text) {
  if (!text) { globalErr.classList.add("hidden"); globalErr.textContent = ""; return; }
  globalErr.textContent = text;
  globalErr.classList.remove("hidden");
}

var announcer = document.getElementById("announcer");
function announce(text) {
  // Re-set the text so that repeated messages are read out too.
  announcer.textContent = "";
  setTimeout(function () { announcer.textContent = text; }, 30);
}

// ------------------------------------------------------------------ formatting
function el(tag, attrs, text) {
  var e = document.createElement(tag);
  if (attrs) for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function fmtTime(iso) {
  if (!iso) return "—";
  var d = new Date(iso);
  if (isNaN(d)) return iso;
  var now = new Date();
  var sameDay = d.toDateString() === now.toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}
function fmtDuration(s) {
  if (s === null || s === undefined || isNaN(s)) return "—";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  var m = Math.floor(s / 60), sec = Math.floor(s % 60);
  if (m < 60) return m + " min " + sec + " s";
  var h = Math.floor(m / 60);
  return h + " h " + (m % 60) + " min";
}
function fmtBytes(b) {
  if (b === null || b === undefined || isNaN(b)) return "—";
  var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = Number(b);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}
function fmtExit(run) {
  if (run.exit_code !== null && run.exit_code !== undefined) return String(run.exit_code);
  if (run.signal !== null && run.signal !== undefined) return "signal " + run.signal;
  return "—";
}
function rank(s) { return s === "queued" ? 0 : s === "running" ? 1 : FINISHED[s] ? 2 : -1; }
function statusWord(s) { return s === "timed_out" ? "timed out" : (s || "—"); }
function setBadge(node, status, cancelling, plain) {
  node.className = "badge " + (status || "");
  node.setAttribute("data-status", status || "");
  node.setAttribute("data-cancelling", cancelling && !FINISHED[status] ? "true" : "false");
  node.textContent = statusWord(status) + (!plain && cancelling && !FINISHED[status] ? " (cancelling)" : "");
}
function tsText(iso) {
  // 2026-11-26T08:00:00.123456Z -> 08:00:00.123 (UTC, as the server stamps it)
  if (!iso) return "";
  var m = /T(\d\d:\d\d:\d\d)(\.\d{1,3})?/.exec(iso);
  // The trailing space keeps copied text apart from the message (the margin does not).
  return (m ? m[1] + (m[2] || "") : iso) + " ";
}
