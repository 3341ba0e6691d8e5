//! Bearer-token checks (constant time) and CORS headers.

use tiny_http::Request;

use super::http::{query_pairs, query_value, request_header, ApiError};

/// Whether `request` carries `token`, as `Authorization: Bearer TOKEN` or `?token=TOKEN`
/// (EventSource cannot set headers).
pub fn check_token(request: &Request, token: &str) -> Result<(), ApiError> {
    // The scheme name is case-insensitive (RFC 9110), the token is not.
    let from_header = request_header(request, "Authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let from_query = || query_value(&query_pairs(request.url()), "token").map(str::to_string);
    match from_header.or_else(from_query) {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(401, "UNAUTHORIZED", "invalid token")),
        None => Err(ApiError::new(
            401,
            "UNAUTHORIZED",
            "this server needs a token: send Authorization: Bearer TOKEN (or ?token=TOKEN)",
        )),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was
/// right (only the length, which is not secret enough to matter).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CORS headers for a request from `origin`, when `allowed` permits it.
pub fn cors_headers(allowed: Option<&str>, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let (Some(allowed), Some(origin)) = (allowed, origin) else {
        return Vec::new();
    };
    if allowed != "*" && allowed != origin {
        return Vec::new();
    }
    vec![
        (
            "Access-Control-Allow-Origin",
            if allowed == "*" {
                "*".to_string()
            } else {
                origin.to_string()
            },
        ),
        ("Vary", "Origin".to_string()),
        (
            "Access-Control-Allow-Methods",
            "GET, POST, DELETE, OPTIONS".to_string(),
        ),
        (
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type, Last-Event-ID".to_string(),
        ),
        ("Access-Control-Max-Age", "600".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn cors_only_for_the_allowed_origin() {
        assert!(cors_headers(None, Some("http://a")).is_empty());
        assert!(cors_headers(Some("http://a"), Some("http://b")).is_empty());
        assert_eq!(
            cors_headers(Some("http://a"), Some("http://a"))[0].1,
            "http://a"
        );
        assert_eq!(cors_headers(Some("*"), Some("http://b"))[0].1, "*");
    }
}
