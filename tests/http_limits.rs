//! What one client may take from the server: header size, header time, idle time and the
//! number of connections. Spoken over raw TCP, because these tests are about the bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use runstream::server::{Catalogue, Server, ServerConfig};
use runstream::{Engine, EngineConfig};
use serde_json::Value;

use crate::sse_client::SseClient;
use crate::util::PATIENCE;

fn start(config: ServerConfig) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::new(EngineConfig {
        log_dir: Some(dir.path().join("runs")),
        ..EngineConfig::default()
    }));
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        allow_commands: true,
        ..config
    };
    (
        Server::start(engine, Catalogue::default(), config).unwrap(),
        dir,
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Reads until the server closes, and parses the one response in it.
fn response_until_close(stream: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer (the server closed with our bytes unread).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the response: {e} (got {raw:?})"),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `GET /api/health` on a fresh connection.
fn health(addr: SocketAddr) -> u16 {
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    response_until_close(&mut stream).0
}

fn assert_error(response: (u16, Value), status: u16, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error_code"], code, "{}", response.1);
    assert!(response.1["timestamp"].is_string(), "{}", response.1);
}

#[test]
fn oversized_or_malformed_request_heads_get_a_json_error_and_are_not_buffered() {
    let (server, _dir) = start(ServerConfig::default());
    let addr = server.addr();

    // A header line that never ends: refused after 8 KiB, not buffered without bound.
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nX-Big: ")
        .unwrap();
    let _ = stream.write_all(&[b'a'; 16 * 1024]);
    assert_error(response_until_close(&mut stream), 431, "PAYLOAD_TOO_LARGE");

    let mut stream = connect(addr);
    let mut line = b"GET /".to_vec();
    line.extend_from_slice(&[b'a'; 16 * 1024]);
    let _ = stream.write_all(&line);
    assert_error(response_until_close(&mut stream), 414, "PAYLOAD_TOO_LARGE");

    let mut stream = connect(addr);
    let mut request = b"GET /api/health HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        request.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    let _ = stream.write_all(&request);
    assert_error(response_until_close(&mut stream), 431, "PAYLOAD_TOO_LARGE");

    let mut stream = connect(addr);
    stream.write_all(b"NONSENSE\r\n\r\n").unwrap();
    assert_error(response_until_close(&mut stream), 400, "BAD_REQUEST");

    let mut stream = connect(addr);
    stream
        .write_all("GET /api/modules/ünïcode HTTP/1.1\r\nHost: localhost\r\n\r\n".as_bytes())
        .unwrap();
    assert_error(response_until_close(&mut stream), 400, "BAD_REQUEST");

    assert_eq!(health(addr), 200);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn slow_headers_get_408_and_idle_connections_are_closed() {
    let (server, _dir) = start(ServerConfig {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    let addr = server.addr();

    // Slowloris: a header line every 50 ms, each in time, the whole never done.
    let mut stream = connect(addr);
    stream.write_all(b"GET /api/health HTTP/1.1\r\n").unwrap();
    let mut dripping = stream.try_clone().unwrap();
    let drip = thread::spawn(move || {
        for i in 0.. {
            thread::sleep(Duration::from_millis(50));
            if dripping
                .write_all(format!("X-{i}: {i}\r\n").as_bytes())
                .is_err()
            {
                return i;
            }
        }
        unreachable!()
    });
    assert_error(response_until_close(&mut stream), 408, "REQUEST_TIMEOUT");
    drop(stream);
    drip.join().unwrap();

    // A connection that never says anything is closed.
    let mut silent = connect(addr);
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed without a word");

    // So is a keep-alive connection after its answer, once it stays idle.
    let mut kept = connect(addr);
    kept.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, body) = response_until_close(&mut kept);
    assert_eq!((status, &body["status"]), (200, &Value::from("healthy")));

    assert_eq!(health(addr), 200);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_stream_is_not_cut_by_the_idle_timeout() {
    let (server, _dir) = start(ServerConfig {
        header_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(100),
        keep_alive: Duration::from_millis(50),
        ..ServerConfig::default()
    });
    let body =
        r#"{"argv": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.1; done"]}"#;
    let mut stream = connect(server.addr());
    write!(
        stream,
        "POST /api/runs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (status, run) = response_until_close(&mut stream);
    assert_eq!(status, 202, "{run}");
    let id = run["run_id"].as_str().unwrap();

    let started = Instant::now();
    let mut client = SseClient::connect(server.addr(), &format!("/api/runs/{id}/logs/stream"), &[]);
    assert_eq!(client.status, 200);
    let events = client.rest();
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e.event == "log" && e.json()["stream"] == "stdout")
        .map(|e| e.json()["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        lines,
        (1..=8).map(|i| format!("line{i}")).collect::<Vec<_>>()
    );
    assert_eq!(events.last().unwrap().event, "complete");
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the stream lasted longer than the idle timeout"
    );
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn connections_beyond_the_limit_get_503_and_freed_ones_are_reused() {
    let (server, _dir) = start(ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    });
    let addr = server.addr();
    // The kernel hands connections to the server in the order they came.
    let held: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    let mut over = connect(addr);
    over.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_error(
        response_until_close(&mut over),
        503,
        "RESOURCE_LIMIT_EXCEEDED",
    );

    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        if response_until_close(&mut stream).0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slots were not reused");
        thread::sleep(Duration::from_millis(20));
    }
    server.shutdown(Duration::from_secs(5));
}

/// Everything the server sends until it closes, split into responses (each starts with a
/// status line; the bodies here are JSON, which never holds one).
fn responses_until_close(stream: &mut TcpStream) -> Vec<(u16, Value)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!(
                "reading until the server closes: {e} (got {:?})",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let mut starts: Vec<usize> = text.match_indices("HTTP/1.").map(|(i, _)| i).collect();
    assert_eq!(starts.first(), Some(&0), "not an HTTP response: {text:?}");
    starts.push(text.len());
    starts
        .windows(2)
        .map(|w| {
            let response = &text[w[0]..w[1]];
            let status = response
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
            let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            (status, serde_json::from_str(body).unwrap_or(Value::Null))
        })
        .collect()
}

#[test]
fn a_body_with_invalid_or_ambiguous_framing_gets_400_and_the_connection_closes() {
    let (server, _dir) = start(ServerConfig::default());
    let addr = server.addr();
    // Connection: close, so a server that answers it too closes then, not after idling.
    let smuggled = "GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

    // (framing headers, body): each once read as "no body" or as the wrong length, which
    // left the rest to be parsed as the next request on the connection.
    let cases = [
        ("Content-Length: -1", ""),
        ("Content-Length: 99999999999999999999999", ""),
        ("Content-Length: 18446744073709551616", ""),
        ("Content-Length: +2", "{}"),
        ("Content-Length: 0x2", "{}"),
        ("Content-Length: ", ""),
        ("Content-Length: 2\r\nContent-Length: 3", "{} "),
        ("Content-Length: 2, 3", "{} "),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 7",
            "0\r\n\r\n",
        ),
        (
            "Content-Length: 2\r\nTransfer-Encoding: chunked",
            "2\r\n{}\r\n0\r\n\r\n",
        ),
        ("Transfer-Encoding: gzip", ""),
        ("Transfer-Encoding: chunked, gzip", "0\r\n\r\n"),
        ("Transfer-Encoding: gzip, chunked", "0\r\n\r\n"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "0\r\n\r\n",
        ),
    ];
    for (framing, body) in cases {
        // One write: the server may close as soon as it has read the head.
        let request = format!(
            "POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n\r\n{body}{smuggled}"
        );
        let mut stream = connect(addr);
        stream.write_all(request.as_bytes()).unwrap();
        let responses = responses_until_close(&mut stream);
        assert_eq!(
            responses.len(),
            1,
            "{framing:?}: one answer, then closed: {responses:?}"
        );
        let response = responses.into_iter().next().unwrap();
        assert_eq!(response.0, 400, "{framing:?}: {}", response.1);
        assert_error(response, 400, "BAD_REQUEST");
    }

    // Valid framing still works, pipelined on one connection: a Content-Length body, a
    // repeated identical Content-Length, a chunked body, then a request that closes.
    let body = r#"{"argv":["true"]}"#;
    let len = body.len();
    let chunked = format!("{len:x}\r\n{body}\r\n0\r\n\r\n");
    let mut stream = connect(addr);
    write!(
        stream,
        "POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{body}\
         POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}, {len}\r\n\r\n{body}\
         POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}\
         GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let responses = responses_until_close(&mut stream);
    let statuses: Vec<u16> = responses.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [202, 202, 202, 200], "{responses:?}");
    for (_, run) in &responses[..3] {
        assert!(run["run_id"].is_string(), "{run}");
    }

    // And on a fresh connection, as the bug report's client would send it.
    let mut stream = connect(addr);
    write!(
        stream,
        "POST /api/runs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{body}"
    )
    .unwrap();
    let (status, run) = response_until_close(&mut stream);
    assert_eq!(status, 202, "{run}");
    server.shutdown(Duration::from_secs(5));
}

/// A request line with `HTTP/2.0` or `HTTP/3.0` got a 505 that was never flushed: the
/// client waited until it gave up, and the request's unread body was parsed as the next
/// request on the connection.
#[test]
fn an_unsupported_http_version_gets_505_at_once_and_the_connection_closes() {
    let (server, _dir) = start(ServerConfig::default());
    let addr = server.addr();
    let smuggled = "GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    for version in ["HTTP/2.0", "HTTP/3.0"] {
        let mut stream = connect(addr);
        write!(
            stream,
            "POST /api/runs {version}\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .unwrap();
        let responses = responses_until_close(&mut stream);
        assert_eq!(responses.len(), 1, "{version}: {responses:?}");
        let (status, body) = &responses[0];
        assert_eq!(*status, 505, "{version}: {body}");
        assert!(body["detail"].is_string(), "{version}: {body}");
    }
    assert_eq!(health(addr), 200);
    server.shutdown(Duration::from_secs(5));
}

/// A chunked body that cannot be decoded is a request that is not HTTP: 400
/// `BAD_REQUEST`, not `VALIDATION_ERROR` (which is 422 everywhere else).
#[test]
fn an_undecodable_chunked_body_gets_400_bad_request() {
    let (server, _dir) = start(ServerConfig::default());
    let mut stream = connect(server.addr());
    stream
        .write_all(
            b"POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        )
        .unwrap();
    assert_error(response_until_close(&mut stream), 400, "BAD_REQUEST");
    server.shutdown(Duration::from_secs(5));
}
