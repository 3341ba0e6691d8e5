//! The connection to a server: base URL, token, and JSON requests over ureq (a sync HTTP
//! client). Every HTTP failure becomes a [`Failure`] naming its cause.

use std::time::Duration;

use clap::Args;
use runstream::server::ServerConfig;
use serde_json::Value;

use super::sse::EventReader;
use super::Failure;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JSON request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream may stay silent: four of the server's default keep-alive periods.
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// Where the server is, and its token.
#[derive(Debug, Args)]
pub struct Connection {
    /// The server's URL
    #[arg(long, env = "RUNSTREAM_URL", default_value_t = default_url())]
    url: String,
    /// The server's token (sent as Authorization: Bearer TOKEN)
    #[arg(long, env = "RUNSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn default_url() -> String {
    format!("http://{}", ServerConfig::default().bind)
}

/// A server's API.
pub struct Api {
    base: String,
    token: Option<String>,
    requests: ureq::Agent,
    streams: ureq::Agent,
}

impl Api {
    /// Checks the URL; connects nothing yet.
    pub fn new(connection: &Connection) -> Result<Api, Failure> {
        let base = connection.url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(Failure::Invalid(format!(
                "--url must start with http:// (for https, put a TLS proxy on this side), got {:?}",
                connection.url
            )));
        }
        let agent = |timeout: ureq::AgentBuilder| timeout.timeout_connect(CONNECT_TIMEOUT).build();
        Ok(Api {
            base,
            token: connection.token.clone().filter(|t| !t.is_empty()),
            requests: agent(ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT)),
            streams: agent(ureq::AgentBuilder::new().timeout_read(STREAM_SILENCE)),
        })
    }

    fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        let request = agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// `GET path` with query pairs; the JSON answer.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let mut request = self.request(&self.requests, "GET", path);
        for (k, v) in query {
            request = request.query(k, v);
        }
        self.json(request.call())
    }

    /// `POST path` with a JSON body; the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.json(self.request(&self.requests, "POST", path).send_json(body))
    }

    /// Opens an SSE stream, resuming after `last_event_id`; `None` when the server answers
    /// 204 (the run is over and everything was seen).
    pub fn stream(
        &self,
        path: &str,
        last_event_id: Option<u64>,
        query: &[(&str, String)],
    ) -> Result<Option<EventReader>, Failure> {
        let mut request = self
            .request(&self.streams, "GET", path)
            .set("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.set("Last-Event-ID", &id.to_string());
        }
        for (k, v) in query {
            request = request.query(k, v);
        }
        let response = request.call().map_err(|e| self.failure(e))?;
        if response.status() == 204 {
            return Ok(None);
        }
        Ok(Some(EventReader::new(response.into_reader())))
    }

    fn json(&self, answer: Result<ureq::Response, ureq::Error>) -> Result<Value, Failure> {
        let response = answer.map_err(|e| self.failure(e))?;
        response.into_json().map_err(|e| {
            Failure::Server(format!(
                "{} answered something that is not JSON: {e}",
                self.base
            ))
        })
    }

    fn failure(&self, error: ureq::Error) -> Failure {
        let response = match error {
            ureq::Error::Status(_, response) => response,
            ureq::Error::Transport(t) => {
                let why = t
                    .message()
                    .map(str::to_string)
                    .or_else(|| std::error::Error::source(&t).map(|s| s.to_string()))
                    .unwrap_or_else(|| t.kind().to_string());
                return Failure::Unreachable(format!("cannot reach {}: {why}", self.base));
            }
        };
        let status = response.status();
        let body: Value = response.into_json().unwrap_or(Value::Null);
        let detail = body["detail"].as_str().unwrap_or("no detail").to_string();
        let code = body["error_code"].as_str().unwrap_or_default();
        match (status, code) {
            (401 | 403, _) => Failure::Unauthorized(format!(
                "{} refused the token ({status}): {detail}",
                self.base
            )),
            (404, "RUN_NOT_FOUND" | "MODULE_NOT_FOUND") => Failure::NotFound(detail),
            (400 | 422, _) => Failure::Invalid(detail),
            // Shutting down, or out of connections: try again later.
            (503, _) => {
                Failure::Unreachable(format!("{} is unavailable (503): {detail}", self.base))
            }
            _ => Failure::Server(format!("{} answered {status}: {detail}", self.base)),
        }
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
