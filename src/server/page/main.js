// The page's start: load everything, poll, open the run named in the address.
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ start
function runFromHash() {
  var m = /(?:^#|&)run=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}
window.addEventListener("hashchange", function () {
  var id = runFromHash();
  if (id && id !== current.id) openRun(id);
});

// Exposed for tests and debugging (read-only use).
window.runstream = { current: function () { return current; }, openRun: openRun, charts: chartsState };

loadHealth();
loadModules();
pollRuns();
pollTimer = setInterval(pollRuns, POLL_MS);
setInterval(loadHealth, POLL_MS);  // its "N active" follows the runs table
var initial = runFromHash();
if (initial) openRun(initial);
