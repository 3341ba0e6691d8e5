//! The HTTP API: routing and one handler per endpoint (the README lists them).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tiny_http::{Method, Request, Response};

use super::auth::{check_token, cors_headers};
use super::download;
use super::http::{
    header, json_response, query_number, query_pairs, query_value, read_json_body, request_header,
    url_path, ApiError, FullResponse,
};
use super::live_catalogue::ReloadError;
use super::modules::{seconds, BuildError, MAX_SECONDS};
use super::run_json::{run_json, MODULE_NAME_LABEL, PARAMETERS_LABEL};
use super::same_origin;
use super::{metrics, page, run_metrics, sse, AppState};
use crate::{From, Next, RunHandle, RunSpec, RunState, Timestamp};

/// Most entries one `/logs` request returns.
const MAX_LOG_LINES: u64 = 100_000;

/// What a handler answers.
enum Reply {
    /// A complete response.
    Full(FullResponse),
    /// Follow this run as SSE from here.
    Stream(RunHandle, From),
    /// Send this run's whole log as text.
    Download(RunHandle),
}

/// One of the web page's files.
fn page_file((content_type, body): (&str, &'static [u8])) -> Reply {
    Reply::Full(
        Response::from_data(body.to_vec()).with_header(header("Content-Type", content_type)),
    )
}

fn json_reply(status: u16, body: &Value) -> Reply {
    Reply::Full(json_response(status, body))
}

/// Answers one request (on its own thread).
pub fn handle(state: &Arc<AppState>, mut request: Request) {
    let origin = request_header(&request, "Origin").map(str::to_string);
    let cors = cors_headers(state.config.cors_origin.as_deref(), origin.as_deref());
    let head = *request.method() == Method::Head;
    // A bug in a handler must still get an answer: unanswered, tiny_http would send a 500
    // with an empty body.
    let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        route(state, &mut request, !cors.is_empty())
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        log::error!("internal error answering {}: {what}", request.url());
        Err(ApiError::new(
            500,
            "INTERNAL_ERROR",
            format!("internal error in runstream: {what}"),
        ))
    });
    let response = match routed {
        Ok(Reply::Full(r)) => r,
        // HEAD of a stream or a download: its headers say enough.
        Ok(Reply::Stream(..)) if head => {
            Response::from_data(Vec::new()).with_header(header("Content-Type", "text/event-stream"))
        }
        Ok(Reply::Download(_)) if head => Response::from_data(Vec::new())
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        Ok(Reply::Stream(run, from)) => return stream(state, run, from, request, &cors),
        Ok(Reply::Download(run)) => return download::send(run, request, &cors),
        Err(e) if e.status == 405 => {
            let allow = allowed_methods(&segments_of(request.url())).join(", ");
            json_response(e.status, &e.body()).with_header(header("Allow", &allow))
        }
        Err(e) => json_response(e.status, &e.body()),
    };
    let response = cors
        .iter()
        .fold(response, |r, (k, v)| r.with_header(header(k, v)));
    if let Err(e) = request.respond(response) {
        log::debug!("client left before the response: {e}");
    }
}

/// The path's segments, percent-decoded, without empty ones.
fn segments_of(url: &str) -> Vec<String> {
    url_path(url)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn route(state: &Arc<AppState>, request: &mut Request, cors: bool) -> Result<Reply, ApiError> {
    let owned = segments_of(request.url());
    let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
    // HEAD is GET without a body (tiny_http leaves the body out).
    let method = match request.method() {
        Method::Head => Method::Get,
        other => other.clone(),
    };
    if method == Method::Options && cors {
        return Ok(Reply::Full(
            Response::from_data(Vec::new()).with_status_code(204),
        ));
    }
    let protected = matches!(segments.first(), Some(&"api") | Some(&"metrics"));
    if protected {
        match &state.config.token {
            // A page on another site cannot know the token, so a request that carries it
            // was not forged, whatever its Origin (a proxy may rewrite Host and not Origin).
            Some(token) => check_token(request, token)?,
            None => same_origin::check(request, &state.config)?,
        }
    }
    use Method::{Delete, Get, Post};
    match (segments.as_slice(), &method) {
        ([], Get) | (["index.html"], Get) => Ok(page_file(page::index())),
        // A name that is not one of the page's files is a path that does not exist (not
        // a 405 telling to use GET, the method that was used).
        (["page", name], Get) => page::file(name)
            .map(page_file)
            .ok_or_else(|| ApiError::new(404, "NOT_FOUND", format!("no such page file: {name:?}"))),
        (["api", "health"], Get) => Ok(json_reply(200, &health(state))),
        (["api", "modules"], Get) => Ok(json_reply(200, &modules(state))),
        (["api", "modules", "reload"], Post) => reload_modules(state),
        (["api", "modules", id], Get) => module(state, id),
        (["api", "modules", id, "run"], Post) => {
            let body = read_json_body(request, state.config.max_body_bytes)?;
            start_module(state, id, body)
        }
        (["api", "runs"], Post) => {
            if !state.config.allow_commands {
                return Err(ApiError::new(
                    403,
                    "FORBIDDEN",
                    "raw commands are disabled: start the server with --allow-commands",
                ));
            }
            let body = read_json_body(request, state.config.max_body_bytes)?;
            start_command(state, body)
        }
        (["api", "runs"], Get) => list_runs(state, request.url()),
        (["api", "runs", id], Get) => Ok(json_reply(200, &run_json(&find(state, id)?.status()))),
        (["api", "runs", id], Delete) | (["api", "runs", id, "cancel"], Post) => cancel(state, id),
        (["api", "runs", id, "logs"], Get) => logs(state, id, request.url()),
        (["api", "runs", id, "metrics"], Get) => run_metrics(state, id, request.url()),
        (["api", "runs", id, "logs", "stream"], Get) => stream_start(state, id, request),
        (["api", "runs", id, "logs", "download"], Get) => Ok(Reply::Download(find(state, id)?)),
        (["api", "system", "stats"], Get) => Ok(json_reply(200, &metrics::system_stats(state))),
        (["api", "gpu"], Get) => Ok(json_reply(200, &state.engine.gpu().report())),
        (["metrics"], Get) => Ok(Reply::Full(
            Response::from_data(metrics::prometheus(state).into_bytes()).with_header(header(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            )),
        )),
        _ => Err(unknown_route(&segments, &method)),
    }
}

/// The methods a known path takes (none for an unknown path).
fn allowed_methods<S: AsRef<str>>(segments: &[S]) -> &'static [&'static str] {
    let segments: Vec<&str> = segments.iter().map(AsRef::as_ref).collect();
    match segments.as_slice() {
        ["api", "modules", "reload"] => &["GET", "POST"], // GET: a module named "reload"
        []
        | ["index.html"]
        | ["page", _]
        | ["api", "health"]
        | ["api", "modules"]
        | ["api", "modules", _] => &["GET"],
        ["api", "runs", _, "logs" | "metrics"]
        | ["api", "runs", _, "logs", "stream" | "download"] => &["GET"],
        ["api", "system", "stats"] | ["api", "gpu"] | ["metrics"] => &["GET"],
        ["api", "modules", _, "run"] | ["api", "runs", _, "cancel"] => &["POST"],
        ["api", "runs"] => &["GET", "POST"],
        ["api", "runs", _] => &["GET", "DELETE"],
        _ => &[],
    }
}

/// 405 when the path exists with another method, else 404.
fn unknown_route(segments: &[&str], method: &Method) -> ApiError {
    let allowed = allowed_methods(segments);
    if allowed.is_empty() {
        ApiError::new(
            404,
            "NOT_FOUND",
            format!("no such endpoint: /{}", segments.join("/")),
        )
    } else {
        ApiError::new(
            405,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not allowed here; use {}", allowed.join(" or ")),
        )
    }
}

fn find(state: &AppState, id: &str) -> Result<RunHandle, ApiError> {
    state
        .engine
        .get(id)
        .ok_or_else(|| ApiError::run_not_found(id))
}

fn health(state: &AppState) -> Value {
    let (live, _) = state.engine.counts();
    let storage = state.engine.storage();
    let status = if state.shutting_down.load(Ordering::SeqCst) {
        "shutting_down"
    } else if !storage.writable {
        "degraded"
    } else {
        "healthy"
    };
    json!({
        "status": status,
        "data_dir": {
            "path": storage.log_dir,
            "writable": storage.writable,
            "error": storage.error,
            "failing_since": storage.failing_since,
            "free_bytes": storage.free_bytes,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "active_runs": live,
        "total_modules": state.catalogue.get().modules.len(),
        "catalogue": state.catalogue.health(),
        "containment": containment_json(state.engine.containment()),
    })
}

/// How runs' processes are held together: `{"kind": "cgroup", "cgroup_dir", "controllers"}`
/// or `{"kind": "process_group", "reason"}`.
fn containment_json(c: &crate::Containment) -> Value {
    json!({
        "kind": c.kind,
        "cgroup_dir": c.cgroup_dir,
        "controllers": c.controllers,
        "reason": c.reason,
    })
}

fn module_json(id: &str, module: &super::modules::Module) -> Value {
    let mut v = serde_json::to_value(module).unwrap_or_default();
    v["id"] = json!(id);
    v
}

fn modules(state: &AppState) -> Value {
    let list: Vec<Value> = state
        .catalogue
        .get()
        .modules
        .iter()
        .map(|(id, m)| module_json(id, m))
        .collect();
    json!({"modules": list, "total": list.len()})
}

fn module(state: &AppState, id: &str) -> Result<Reply, ApiError> {
    let catalogue = state.catalogue.get();
    let m = catalogue
        .modules
        .get(id)
        .ok_or_else(|| module_not_found(id))?;
    Ok(json_reply(200, &module_json(id, m)))
}

fn module_not_found(id: &str) -> ApiError {
    ApiError::new(404, "MODULE_NOT_FOUND", format!("module {id:?} not found"))
}

/// `POST /api/modules/reload`: what changed, or why the old catalogue stays (422 for a
/// bad file, 400 when the server has no file to read).
fn reload_modules(state: &AppState) -> Result<Reply, ApiError> {
    match state.catalogue.reload() {
        Ok(report) => Ok(json_reply(200, &report.json())),
        Err(e @ ReloadError::NoFile) => Err(ApiError::new(400, "INVALID_STATE", e.to_string())),
        Err(e) => Err(ApiError::validation(e.to_string())),
    }
}

fn submit(state: &AppState, spec: RunSpec) -> Result<Reply, ApiError> {
    match state.engine.submit(spec) {
        Ok(run) => Ok(json_reply(202, &run_json(&run.status()))),
        Err(crate::SubmitError::ShuttingDown) => Err(ApiError::new(
            503,
            "RESOURCE_LIMIT_EXCEEDED",
            "the server is shutting down",
        )),
        Err(e @ crate::SubmitError::InvalidSpec(_)) => Err(ApiError::validation(e.to_string())),
        // Refused rather than started and forgotten: after a restart it would be unknown.
        Err(e @ crate::SubmitError::Storage { .. }) => Err(ApiError::new(
            507,
            "INSUFFICIENT_STORAGE",
            format!("{e} (is the data directory's disk full?)"),
        )),
        // Out of threads (the user's process limit): the server is full, not broken.
        Err(e @ crate::SubmitError::Thread(_)) => Err(ApiError::resources(e.to_string())),
    }
}

fn start_module(state: &AppState, id: &str, body: Value) -> Result<Reply, ApiError> {
    let params = match &body {
        Value::Null => serde_json::Map::new(),
        Value::Object(o) => {
            if let Some(extra) = o.keys().find(|k| *k != "parameters") {
                return Err(ApiError::validation(format!(
                    "unknown field {extra:?}; send {{\"parameters\": {{...}}}}"
                )));
            }
            match o.get("parameters") {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(Value::Object(p)) => p.clone(),
                Some(_) => return Err(ApiError::validation("\"parameters\" must be an object")),
            }
        }
        _ => {
            return Err(ApiError::validation(
                "body must be a JSON object: {\"parameters\": {...}}",
            ))
        }
    };
    // One catalogue for the whole request, whatever a reload does meanwhile.
    let catalogue = state.catalogue.get();
    let (spec, values) = catalogue.build(id, &params).map_err(|e| match e {
        BuildError::NotFound => module_not_found(id),
        BuildError::Invalid(why) => ApiError::validation(why),
    })?;
    let name = catalogue.modules[id].name.clone();
    let spec = spec
        .label(MODULE_NAME_LABEL, name)
        .label(PARAMETERS_LABEL, json!(values).to_string());
    submit(state, spec)
}

fn start_command(state: &AppState, body: Value) -> Result<Reply, ApiError> {
    let Value::Object(o) = &body else {
        return Err(ApiError::validation(
            "body must be a JSON object with \"argv\"",
        ));
    };
    const FIELDS: [&str; 7] = [
        "argv",
        "cwd",
        "env",
        "timeout_seconds",
        "grace_seconds",
        "gpu_memory_mb",
        "memory_max_mb",
    ];
    if let Some(extra) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::validation(format!(
            "unknown field {extra:?} (allowed: {})",
            FIELDS.join(", ")
        )));
    }
    let argv: Vec<String> = match o.get("argv") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::validation("\"argv\" must be an array of strings"))?,
        _ => {
            return Err(ApiError::validation(
                "\"argv\" must be a non-empty array of strings",
            ))
        }
    };
    let mut spec = RunSpec::new(&argv[0]).args(&argv[1..]);
    match o.get("cwd") {
        None | Some(Value::Null) => {}
        Some(Value::String(dir)) if dir.contains('\0') => {
            return Err(ApiError::validation("\"cwd\" must not contain NUL"))
        }
        Some(Value::String(dir)) => spec = spec.cwd(dir),
        Some(_) => return Err(ApiError::validation("\"cwd\" must be a string")),
    }
    match o.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(env)) => {
            for (k, v) in env {
                let v = v.as_str().ok_or_else(|| {
                    ApiError::validation(format!("env value of {k:?} must be a string"))
                })?;
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(ApiError::validation(format!(
                        "invalid environment variable {k:?}"
                    )));
                }
                spec = spec.env(k, v);
            }
        }
        Some(_) => return Err(ApiError::validation("\"env\" must be an object of strings")),
    }
    let seconds = |key: &str| -> Result<Option<Duration>, ApiError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().and_then(seconds).map(Some).ok_or_else(|| {
                ApiError::validation(format!(
                    "\"{key}\" must be a number of seconds from 0 to below {MAX_SECONDS:e}"
                ))
            }),
        }
    };
    if let Some(t) = seconds("timeout_seconds")?.filter(|t| !t.is_zero()) {
        spec = spec.timeout(t);
    }
    if let Some(g) = seconds("grace_seconds")? {
        spec = spec.grace(g);
    }
    match o.get("gpu_memory_mb") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let mb = v.as_u64().ok_or_else(|| {
                ApiError::validation("\"gpu_memory_mb\" must be a non-negative integer")
            })?;
            spec = spec.gpu_memory_mb(mb);
        }
    }
    match o.get("memory_max_mb") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let mb = v.as_u64().ok_or_else(|| {
                ApiError::validation("\"memory_max_mb\" must be a non-negative integer")
            })?;
            spec = spec.memory_max_mb(mb);
        }
    }
    let params: BTreeMap<&str, &Value> = o.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let spec = spec
        .label(MODULE_NAME_LABEL, "command")
        .label(PARAMETERS_LABEL, json!(params).to_string());
    submit(state, spec)
}

fn list_runs(state: &AppState, url: &str) -> Result<Reply, ApiError> {
    let q = query_pairs(url);
    // `status=a&status=b` and `status=a,b` both mean either.
    let statuses = q
        .iter()
        .filter(|(k, _)| k == "status")
        .flat_map(|(_, v)| v.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| {
            RunState::parse(s).ok_or_else(|| {
                ApiError::validation(format!(
                    "unknown status {s:?} (use queued, running, completed, failed, cancelled or timed_out)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let module_id = query_value(&q, "module_id").filter(|s| !s.is_empty());
    let limit = query_number(&q, "limit")?.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 1000"));
    }
    let offset = query_number(&q, "offset")?.unwrap_or(0);
    let mut runs: Vec<_> = state
        .engine
        .list()
        .into_iter()
        .rev() // newest first
        .map(|r| r.status())
        .filter(|s| statuses.is_empty() || statuses.contains(&s.status))
        .filter(|s| module_id.is_none_or(|m| s.module_id == m))
        .collect();
    let total = runs.len();
    let page: Vec<Value> = runs
        .drain(..)
        .skip(offset as usize)
        .take(limit as usize)
        .map(|s| run_json(&s))
        .collect();
    Ok(json_reply(
        200,
        &json!({"runs": page, "total": total, "limit": limit, "offset": offset}),
    ))
}

fn cancel(state: &AppState, id: &str) -> Result<Reply, ApiError> {
    let run = find(state, id)?;
    if !run.cancel() {
        let s = run.status();
        return Err(ApiError::new(
            400,
            "INVALID_STATE",
            format!(
                "run {id} is already {}; only queued or running runs can be cancelled",
                s.status.as_str()
            ),
        ));
    }
    // Answer with the state the cancel led to (cancelling, or cancelled for a queued run),
    // not the one before it; the stop itself goes on in the run's thread.
    let mut sub = run.subscribe(From::Tail(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sub.next(left) {
            Next::Status(s) if s.cancelling || s.status.is_finished() => break,
            Next::End(_) | Next::Timeout => break,
            _ => {}
        }
    }
    Ok(json_reply(200, &run_json(&run.status())))
}

fn logs(state: &AppState, id: &str, url: &str) -> Result<Reply, ApiError> {
    let run = find(state, id)?;
    let q = query_pairs(url);
    let tail = query_number(&q, "tail")?.unwrap_or(500).min(MAX_LOG_LINES);
    let after_seq = query_number(&q, "after_seq")?;
    let since = match query_value(&q, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(Timestamp::parse(text).ok_or_else(|| {
            ApiError::validation(format!("since must be an ISO-8601 time, got {text:?}"))
        })?),
    };
    let capture = run.capture();
    let total = capture.stats().entries;
    let mut page = LogsPage::default();
    if since.is_none() && after_seq.is_none() {
        // The newest `tail` entries, read forward in bounded batches; the oldest go when
        // they no longer fit in the body.
        let from = total.saturating_sub(tail);
        page.truncated = from > 0;
        let mut cursor = from;
        while cursor < total {
            let (batch, _) = capture.read(cursor, 4096);
            let Some(last) = batch.last() else { break };
            cursor = last.seq + 1;
            for e in batch.into_iter().filter(|e| e.seq < total) {
                page.push_newest(e);
            }
        }
    } else {
        // Everything after the cursor (and since the time); the first `tail` of them, as
        // many as fit in the body.
        let mut cursor = after_seq.map_or(0, |n| n.saturating_add(1));
        'read: while cursor < total {
            let (batch, _) = capture.read(cursor, 4096);
            let Some(last) = batch.last() else { break };
            cursor = last.seq + 1;
            for e in batch {
                if since.is_some_and(|t| e.timestamp < t) {
                    continue;
                }
                if page.entries.len() as u64 == tail || !page.push_oldest(e) {
                    page.truncated = true;
                    break 'read;
                }
            }
        }
    }
    Ok(Reply::Full(page.response(run.id(), total)))
}

/// Most bytes of entries one `/logs` answer carries: at most one entry more passes it.
/// 500 lines of 64 KiB were a 74 MB body (and several times that while it was built).
const MAX_LOGS_BODY_BYTES: usize = 4 << 20;

/// The entries of one `/logs` answer, within [`MAX_LOGS_BODY_BYTES`].
#[derive(Default)]
struct LogsPage {
    entries: std::collections::VecDeque<Arc<crate::Entry>>,
    bytes: usize,
    /// Entries that matched were left out (by `tail` or by bytes).
    truncated: bool,
    /// Entries were left out because of the byte cap.
    by_bytes: bool,
}

impl LogsPage {
    /// Adds `e` after the others, dropping the oldest that no longer fit.
    fn push_newest(&mut self, e: Arc<crate::Entry>) {
        self.bytes += e.json().len() + 1;
        self.entries.push_back(e);
        while self.bytes > MAX_LOGS_BODY_BYTES && self.entries.len() > 1 {
            let old = self.entries.pop_front().expect("more than one");
            self.bytes -= old.json().len() + 1;
            self.truncated = true;
            self.by_bytes = true;
        }
    }

    /// Adds `e` after the others if it fits (the first always does); `false` if not.
    fn push_oldest(&mut self, e: Arc<crate::Entry>) -> bool {
        let size = e.json().len() + 1;
        if !self.entries.is_empty() && self.bytes + size > MAX_LOGS_BODY_BYTES {
            self.by_bytes = true;
            return false;
        }
        self.bytes += size;
        self.entries.push_back(e);
        true
    }

    /// `{run_id, logs, total_lines, truncated, truncated_by_bytes, max_bytes}`, built from
    /// the entries' shared encodings (a `serde_json::Value` of them would be a copy of
    /// every message, several times its size).
    fn response(&self, run_id: &str, total: u64) -> super::http::FullResponse {
        let mut body = String::with_capacity(self.bytes + 256);
        body.push_str("{\"run_id\":");
        body.push_str(&json!(run_id).to_string());
        body.push_str(",\"logs\":[");
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e.json());
        }
        body.push_str(&format!(
            "],\"total_lines\":{total},\"truncated\":{},\"truncated_by_bytes\":{},\"max_bytes\":{MAX_LOGS_BODY_BYTES}}}",
            self.truncated, self.by_bytes
        ));
        Response::from_data(body.into_bytes())
            .with_status_code(200)
            .with_header(header("Content-Type", "application/json"))
    }
}

fn run_metrics(state: &AppState, id: &str, url: &str) -> Result<Reply, ApiError> {
    let run = find(state, id)?;
    let q = query_pairs(url);
    let names: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "names")
        .flat_map(|(_, v)| v.split(','))
        .filter(|s| !s.is_empty())
        .collect();
    // Counted first: the series then hold at least every line before it.
    let through_seq = run.capture().stats().entries;
    let series = run_metrics::select(run.metrics(), &names);
    match query_value(&q, "format").filter(|f| !f.is_empty()) {
        None | Some("json") => Ok(json_reply(
            200,
            &run_metrics::json(&run, through_seq, &series),
        )),
        Some("csv") => Ok(Reply::Full(
            Response::from_data(run_metrics::csv(&series).into_bytes())
                .with_header(header("Content-Type", "text/csv; charset=utf-8")),
        )),
        Some(other) => Err(ApiError::validation(format!(
            "format must be json or csv, got {other:?}"
        ))),
    }
}

/// Where a stream starts: `Last-Event-ID` (resume after it), `?after_seq=`, `?tail=`, or
/// the start. A finished run whose client has seen everything gets 204, which stops
/// EventSource from reconnecting.
fn stream_start(state: &AppState, id: &str, request: &Request) -> Result<Reply, ApiError> {
    let run = find(state, id)?;
    let q = query_pairs(request.url());
    let last_event_id = request_header(request, "Last-Event-ID")
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::validation(format!("Last-Event-ID must be an entry seq, got {v:?}"))
            })
        })
        .transpose()?;
    let after_seq = query_number(&q, "after_seq")?;
    let tail = query_number(&q, "tail")?;
    let from = match (last_event_id.or(after_seq), tail) {
        (Some(seq), _) => From::AfterSeq(seq),
        (None, Some(n)) => From::Tail(n),
        (None, None) => From::Start,
    };
    if let From::AfterSeq(seq) = from {
        if run.capture().is_finished() && seq.saturating_add(1) >= run.capture().stats().entries {
            return Ok(Reply::Full(
                Response::from_data(Vec::new()).with_status_code(204),
            ));
        }
    }
    Ok(Reply::Stream(run, from))
}

fn stream(
    state: &AppState,
    run: RunHandle,
    from: From,
    request: Request,
    cors: &[(&'static str, String)],
) {
    // Counted and checked in one step, so concurrent connections cannot overshoot.
    let open = state.sse_clients.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = SseSlot(state);
    if open > state.config.max_sse_clients {
        let e = ApiError::new(
            503,
            "RESOURCE_LIMIT_EXCEEDED",
            format!(
                "too many streams open (limit {})",
                state.config.max_sse_clients
            ),
        );
        let response = cors
            .iter()
            .fold(json_response(e.status, &e.body()), |r, (k, v)| {
                r.with_header(header(k, v))
            });
        let _ = request.respond(response);
        return;
    }
    let sub = run.subscribe(from);
    let headers: Vec<(&str, &str)> = cors.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(e) = sse::stream(
        request,
        &run,
        sub,
        state.config.keep_alive,
        state.config.sse_retry,
        &headers,
    ) {
        log::debug!("stream of {} ended: client left ({e})", run.id());
    }
}

/// Counts one open SSE connection for as long as it lives.
struct SseSlot<'a>(&'a AppState);

impl Drop for SseSlot<'_> {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::SeqCst);
    }
}
