//! Guards against web pages on other sites: cross-site request forgery and DNS rebinding.
//!
//! A page the user visits can send a "simple" POST (form or `text/plain` body) to
//! `http://127.0.0.1:8787` without asking first, and with `--allow-commands` that starts
//! any command. A page on a domain that re-resolves to 127.0.0.1 (DNS rebinding) can even
//! read the answers, since to the browser they are same-origin. So, like Jupyter, a
//! server without a token refuses
//! - a request whose `Origin` is neither this server (as named by `Host`) nor the
//!   `--cors-origin`;
//! - a request whose `Host` is not a loopback name.
//!
//! With a token these checks are not needed (a forging page cannot know the token) and
//! would get in the way of reverse proxies, which may rewrite `Host`.

use std::net::IpAddr;

use tiny_http::Request;

use super::http::{request_header, ApiError};
use super::ServerConfig;

/// Checks `Host` and `Origin` of a request to the API of a server without a token.
pub fn check(request: &Request, config: &ServerConfig) -> Result<(), ApiError> {
    let host = request_header(request, "Host");
    if let Some(host) = host.filter(|h| !is_loopback_host(h)) {
        return Err(ApiError::new(
            403,
            "FORBIDDEN",
            format!(
                "Host {host:?} is not a loopback name: without --token the server answers \
                     only to localhost, 127.0.0.1 or [::1] (a defence against DNS rebinding)"
            ),
        ));
    }
    let Some(origin) = request_header(request, "Origin") else {
        return Ok(()); // not from a browser's cross-origin request
    };
    let allowed = config
        .cors_origin
        .as_deref()
        .is_some_and(|a| a == "*" || a == origin);
    if allowed || host.is_some_and(|h| same_host(origin, h)) {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "FORBIDDEN",
        format!(
            "cross-origin request from {origin:?} refused: allow that origin with --cors-origin"
        ),
    ))
}

/// Whether `origin` (`scheme://host[:port]`) names the server that `host` (the `Host`
/// header) names. The scheme is not compared: a TLS proxy in front changes it.
fn same_host(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""), // [::1]:8787
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for host in [
            "localhost",
            "localhost:8787",
            "LocalHost.:1",
            "app.localhost:80",
            "127.0.0.1:8787",
            "127.1.2.3",
            "[::1]:8787",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8787",
            "localhost.evil.example",
            "10.0.0.1:8787",
            "[::2]:1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn same_host_ignores_the_scheme_only() {
        assert!(same_host("http://127.0.0.1:8787", "127.0.0.1:8787"));
        assert!(same_host("https://Runs.Example", "runs.example"));
        assert!(!same_host("http://127.0.0.1:8788", "127.0.0.1:8787"));
        assert!(!same_host("null", "127.0.0.1:8787"));
    }
}
