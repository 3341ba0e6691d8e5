// The page's health line and module forms (start a run).
// The scripts are classic scripts sharing one global scope, loaded in order by
// index.html (no build step).
"use strict";
// ------------------------------------------------------------------ health
function loadHealth() {
  api("GET", "/api/health").then(function (h) {
    document.getElementById("version").textContent = h && h.version ? "v" + h.version : "";
    document.getElementById("health").textContent = h
      ? (h.active_runs || 0) + " active · " + (h.total_modules || 0) + " modules" : "";
  }).catch(function () { /* optional */ });
}

// ------------------------------------------------------------------ modules
var modulesEl = document.getElementById("modules");

function loadModules() {
  modulesEl.setAttribute("aria-busy", "true");
  return api("GET", "/api/modules").then(function (data) {
    renderModules(data && data.modules || []);
  }).catch(function (e) {
    modulesEl.textContent = "";
    modulesEl.appendChild(el("p", { "class": "form-error", role: "alert" },
      e.status === 401 ? "Modules cannot be listed without a token." : "Could not load modules: " + e.message));
  }).then(function () { modulesEl.setAttribute("aria-busy", "false"); });
}

function renderModules(mods) {
  modulesEl.textContent = "";
  if (!mods.length) {
    modulesEl.appendChild(el("p", { "class": "muted" }, "No modules are configured."));
    return;
  }
  mods.forEach(function (m) { modulesEl.appendChild(moduleForm(m)); });
}

function fieldId(mid, name) { return "p-" + mid + "-" + name; }

function moduleForm(m) {
  var box = el("div", { "class": "module", "data-module-id": m.id });
  var form = el("form", { "data-module": m.id, novalidate: "", "aria-labelledby": "mod-title-" + m.id });
  var h = el("h3", { id: "mod-title-" + m.id }, m.name || m.id);
  form.appendChild(h);
  form.appendChild(el("div", { "class": "mid" }, m.id));
  if (m.description) form.appendChild(el("p", { "class": "desc" }, m.description));

  var fields = [];
  var ps = m.parameters || {};
  Object.keys(ps).forEach(function (name) {
    var p = ps[name] || {};
    var id = fieldId(m.id, name);
    var wrap = el("div", { "class": "field" });
    var label = el("label", { "for": id }, name);
    if (type !== "boolean" && (p.required === true || ((p.required === null || p.required === undefined) &&
        (p["default"] === null || p["default"] === undefined)))) {
      label.appendChild(el("span", { "class": "req" }, " (required)"));
    }
    var input;
    var type = p.type || "string";
    var hasDefault = p["default"] !== null && p["default"] !== undefined;
    // The server's rule: required unless it says otherwise, when there is no default.
    var required = p.required === true || ((p.required === null || p.required === undefined) && !hasDefault);
    if (Array.isArray(p["enum"]) && p["enum"].length) {
      input = el("select", { id: id, name: name });
      p["enum"].forEach(function (v, i) {
        var o = el("option", { value: String(i) }, String(v));
        if (p["default"] !== undefined && p["default"] === v) o.selected = true;
        input.appendChild(o);
      });
      fields.push({ name: name, kind: "enum", values: p["enum"], input: input });
      wrap.appendChild(label); wrap.appendChild(input);
    } else if (type === "boolean") {
      wrap.className = "field check";
      input = el("input", { id: id, name: name, type: "checkbox" });
      input.checked = p["default"] === true;
      fields.push({ name: name, kind: "boolean", input: input });
      wrap.appendChild(input); wrap.appendChild(label);
    } else if (type === "integer" || type === "number") {
      input = el("input", { id: id, name: name, type: "number", inputmode: type === "integer" ? "numeric" : "decimal" });
      if (p.min !== null && p.min !== undefined) input.min = String(p.min);
      if (p.max !== null && p.max !== undefined) input.max = String(p.max);
      input.step = type === "integer" ? "1" : "any";
      if (p["default"] !== null && p["default"] !== undefined) input.value = String(p["default"]);
      if (required) input.required = true;
      fields.push({ name: name, kind: type, input: input, hasDefault: hasDefault, required: required });
      wrap.appendChild(label); wrap.appendChild(input);
    } else {
      input = el("input", { id: id, name: name, type: "text", autocomplete: "off", spellcheck: "false" });
      if (p.pattern) input.pattern = p.pattern;
      if (p["default"] !== null && p["default"] !== undefined) input.value = String(p["default"]);
      if (required) input.required = true;
      fields.push({ name: name, kind: "string", input: input, hasDefault: hasDefault, required: required });
      wrap.appendChild(label); wrap.appendChild(input);
    }
    var helpText = [];
    if (p.description) helpText.push(p.description);
    var range = [];
    if (p.min !== null && p.min !== undefined) range.push("min " + p.min);
    if (p.max !== null && p.max !== undefined) range.push("max " + p.max);
    if (range.length) helpText.push(type + ", " + range.join(", "));
    else if (type !== "boolean" && !(Array.isArray(p["enum"]) && p["enum"].length)) helpText.push(type);
    if (helpText.length) {
      var help = el("span", { "class": "help", id: id + "-help" }, helpText.join(" — "));
      input.setAttribute("aria-describedby", id + "-help");
      wrap.appendChild(help);
    }
    form.appendChild(wrap);
  });
  if (!fields.length) form.appendChild(el("p", { "class": "muted" }, "No parameters."));

  var meta = [];
  if (m.timeout_seconds) meta.push("timeout " + fmtDuration(m.timeout_seconds));
  if (m.gpu_memory_mb) meta.push("needs " + m.gpu_memory_mb + " MB GPU memory");
  if (meta.length) form.appendChild(el("div", { "class": "meta" }, meta.join(" · ")));

  var actions = el("div", { "class": "form-actions" });
  var submit = el("button", { type: "submit", "data-action": "start" }, "Start " + (m.name || m.id));
  actions.appendChild(submit);
  form.appendChild(actions);
  var err = el("div", { "class": "form-error hidden", role: "alert", "data-role": "form-error" });
  form.appendChild(err);

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    err.classList.add("hidden");
    var values = {};
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i], inp = f.input;
      if (f.kind === "boolean") { values[f.name] = inp.checked; continue; }
      if (f.kind === "enum") { values[f.name] = f.values[Number(inp.value)]; continue; }
      if (!inp.checkValidity()) {
        showFormError(err, f.name + ": " + (inp.validationMessage || "invalid value"));
        inp.focus();
        return;
      }
      if (f.kind === "integer" || f.kind === "number") {
        if (inp.value === "") {
          if (!f.required && !f.hasDefault) continue;   // optional and left empty: not sent
          showFormError(err, f.name + ": a number is needed"); inp.focus(); return;
        }
        var n = Number(inp.value);
        if (!isFinite(n) || (f.kind === "integer" && Math.floor(n) !== n)) {
          showFormError(err, f.name + ": " + (f.kind === "integer" ? "a whole number is needed" : "a number is needed"));
          inp.focus();
          return;
        }
        values[f.name] = n;
      } else {
        if (inp.value === "" && !f.required && !f.hasDefault) continue;
        values[f.name] = inp.value;
      }
    }
    submit.disabled = true;
    api("POST", "/api/modules/" + encodeURIComponent(m.id) + "/run", { parameters: values })
      .then(function (run) {
        announce("Started " + (m.name || m.id) + ".");
        if (run && run.run_id) {
          upsertRunRow(run, true);
          openRun(run.run_id, run);
        }
        pollRuns();
      })
      .catch(function (e) { showFormError(err, e.detail || e.message || String(e)); })
      .then(function () { submit.disabled = false; });
  });

  box.appendChild(form);
  return box;
}

function showFormError(node, text) {
  node.textContent = text;
  node.classList.remove("hidden");
}
