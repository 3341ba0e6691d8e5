//! Small HTTP pieces on top of tiny_http: JSON responses, the error body, query strings,
//! bounded request bodies, and chunked streaming over the raw connection.

use std::io::{self, ErrorKind, Read, Write};

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response};

use crate::Timestamp;

/// An API error: an HTTP status, a machine-readable code and a sentence for people.
/// Sent as `{"detail", "error_code", "timestamp"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// `RUN_NOT_FOUND`, `VALIDATION_ERROR`, …
    pub code: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
}

impl ApiError {
    /// An error with this status, code and detail.
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 503 `RESOURCE_LIMIT_EXCEEDED`: the system is out of something (threads,
    /// processes); the same request may work later.
    pub fn resources(detail: impl Into<String>) -> ApiError {
        ApiError::new(503, "RESOURCE_LIMIT_EXCEEDED", detail)
    }

    /// 422 `VALIDATION_ERROR`.
    pub fn validation(detail: impl Into<String>) -> ApiError {
        ApiError::new(422, "VALIDATION_ERROR", detail)
    }

    /// 404 `RUN_NOT_FOUND`.
    pub fn run_not_found(id: &str) -> ApiError {
        ApiError::new(404, "RUN_NOT_FOUND", format!("run {id:?} not found"))
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"detail": self.detail, "error_code": self.code, "timestamp": Timestamp::now()})
    }
}

/// A `Content-Type`-like header.
pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}

/// A complete response with an in-memory body.
pub type FullResponse = Response<io::Cursor<Vec<u8>>>;

/// A JSON response.
pub fn json_response(status: u16, body: &Value) -> FullResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::from_data(bytes)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

/// The decoded query string of a URL, as (key, value) pairs.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The path of a URL, without the query, percent-decoded.
pub fn url_path(url: &str) -> String {
    percent_decode(url.split('?').next().unwrap_or(""))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of a query parameter.
pub fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A query parameter as a number, with a clear 422 when it is not one.
pub fn query_number(pairs: &[(String, String)], key: &str) -> Result<Option<u64>, ApiError> {
    query_value(pairs, key)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::validation(format!(
                    "query parameter {key} must be a non-negative integer, got {v:?}"
                ))
            })
        })
        .transpose()
}

/// The value of a request header.
pub fn request_header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The body of the HTTP layer's own error answers, in the API's error shape: a request
/// it could not read (400), whose headers came too slowly (408) or were too large (414,
/// 431), or a connection over the limit (503).
pub fn connection_error_body(status: u16, reason: &str) -> String {
    let code = match status {
        408 => "REQUEST_TIMEOUT",
        414 | 431 => "PAYLOAD_TOO_LARGE",
        503 => "RESOURCE_LIMIT_EXCEEDED",
        _ => "BAD_REQUEST",
    };
    ApiError::new(status, code, reason).body().to_string()
}

/// Reads the body as JSON, at most `limit` bytes (413 beyond). An empty body is `null`.
pub fn read_json_body(request: &mut Request, limit: usize) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "PAYLOAD_TOO_LARGE",
            format!("request body is larger than {limit} bytes"),
        )
    };
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            // The connection's read timeout: the client stopped sending mid-body.
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                ApiError::new(408, "REQUEST_TIMEOUT", "the request body stopped arriving")
            }
            // Bad chunk framing and the like: not HTTP (422 is for a body that is read).
            _ => ApiError::new(
                400,
                "BAD_REQUEST",
                format!("could not read the request body: {e}"),
            ),
        })?;
    if body.len() > limit {
        return Err(too_large());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    // As FastAPI does: a form or text body is not taken for JSON, so a cross-site form
    // post cannot pass for an API call.
    if let Some(kind) = request_header(request, "Content-Type") {
        let essence = kind
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json = essence == "application/json"
            || essence.starts_with("application/") && essence.ends_with("+json");
        if !json {
            return Err(ApiError::validation(format!(
                "the body must be JSON sent as Content-Type: application/json (got {kind:?})"
            )));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::validation(format!("request body is not valid JSON: {e}")))
}

/// Writes a response body straight to the connection as it is produced, bypassing
/// tiny_http's buffering (which holds ~8 KiB before sending anything): each `chunk` goes
/// out and is flushed at once.
///
/// HTTP/1.1 gets chunked framing and the connection stays usable after the response (it
/// is closed at once if the client sent `Connection: close`). HTTP/1.0 has no chunked
/// framing: the body is sent as is and ends when the connection closes. (tiny_http stops
/// reading from a connection after a 1.0 or `close` request, so the connection closes as
/// soon as this writer is dropped.)
pub struct StreamingResponse {
    out: Box<dyn Write + Send>,
    chunked: bool,
}

impl StreamingResponse {
    /// Takes over the connection and writes the status line and headers.
    pub fn start(
        request: Request,
        status: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<StreamingResponse> {
        let http_1_0 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
        let close_asked = request_header(&request, "Connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        let mut head = format!("HTTP/1.1 {status}\r\n");
        if http_1_0 {
            head.push_str("Connection: close\r\n");
        } else {
            head.push_str("Transfer-Encoding: chunked\r\n");
            if close_asked {
                head.push_str("Connection: close\r\n");
            }
        }
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = request.into_writer();
        out.write_all(head.as_bytes())?;
        out.flush()?;
        Ok(StreamingResponse {
            out,
            chunked: !http_1_0,
        })
    }

    /// Sends `data` and flushes it. An error means the client is gone.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            write!(self.out, "{:x}\r\n", data.len())?;
            self.out.write_all(data)?;
            self.out.write_all(b"\r\n")?;
        } else {
            self.out.write_all(data)?;
        }
        self.out.flush()
    }

    /// Ends the body (the zero-length chunk; for HTTP/1.0, closing the connection).
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = query_pairs("/x?tail=5&since=2026-11-26T10%3A00%3A00Z&a+b=c%20d&flag&bad=%zz&u=%é");
        assert_eq!(query_value(&q, "tail"), Some("5"));
        assert_eq!(query_value(&q, "since"), Some("2026-11-26T10:00:00Z"));
        assert_eq!(query_value(&q, "a b"), Some("c d"));
        assert_eq!(query_value(&q, "flag"), Some(""));
        assert_eq!(query_value(&q, "bad"), Some("%zz"));
        assert_eq!(url_path("/api/runs/a%20b?x=1"), "/api/runs/a b");
        assert!(query_number(&q, "since").is_err());
        assert_eq!(query_number(&q, "tail"), Ok(Some(5)));
    }
}
