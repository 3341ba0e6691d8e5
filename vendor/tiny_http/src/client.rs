use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common::{HTTPVersion, Method};
use crate::limits::ConnectionLimits;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // runstream patch: header size and time limits
    limits: Arc<ConnectionLimits>,

    // runstream patch: reads that reached the socket (see read_next_line)
    socket_reads: Arc<AtomicUsize>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// runstream patch: a line or the headers were too large (414 or 431)
    TooLarge(u16, &'static str),
    /// runstream patch: the headers did not arrive within the header timeout (408)
    HeaderTimeout,
    /// runstream patch: a request line or header with bytes beyond ASCII (400)
    NotAscii,
    /// runstream patch: nothing arrived and nothing was being answered for the idle timeout
    Idle,
    /// runstream patch: invalid or ambiguous body framing (400, then the connection closes)
    BadFraming(HTTPVersion, &'static str),
    /// runstream patch: a version above HTTP/1.1 (505, then the connection closes)
    UnsupportedVersion,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<ConnectionLimits>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let socket_reads = read_socket.socket_reads();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            socket_reads,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// runstream patch: `started` is when the request's first byte came (set here when it
    /// comes); lines are capped at `max_line_bytes` (`too_long` is the status beyond), and
    /// the socket's read timeout wakes the read to check the header and idle deadlines.
    fn read_next_line(
        &mut self,
        started: &mut Option<Instant>,
        too_long: u16,
    ) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;
        // Idle since the first wake-up that found no answer in progress: the previous
        // answer may have finished any time before, so idle ends up to one read tick late.
        let mut idle_since: Option<Instant> = None;
        let mut socket_reads_seen = usize::MAX;

        loop {
            let byte = match self.next_header_source.by_ref().bytes().next() {
                Some(Ok(b)) => b,
                Some(Err(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    match started {
                        Some(t) if t.elapsed() >= self.limits.header_timeout => {
                            return Err(ReadError::HeaderTimeout)
                        }
                        Some(_) => {}
                        // Between requests: a long response (a stream) keeps the connection.
                        None if self.sink.previous_in_progress() => idle_since = None,
                        None => {
                            let since = *idle_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= self.limits.idle_timeout {
                                return Err(ReadError::Idle);
                            }
                        }
                    }
                    continue;
                }
                Some(Err(e)) => return Err(ReadError::ReadIoError(e)),
                None => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };
            // Checked after every read that reached the socket (not every byte: buffered
            // bytes take no time), so a client dripping a byte at a time cannot stretch it.
            let started = *started.get_or_insert_with(Instant::now);
            let socket_reads = self.socket_reads.load(Ordering::Relaxed);
            if socket_reads != socket_reads_seen {
                socket_reads_seen = socket_reads;
                if started.elapsed() >= self.limits.header_timeout {
                    return Err(ReadError::HeaderTimeout);
                }
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                // runstream patch: answered 400 (upstream closed without a word).
                return AsciiString::from_ascii(buf).map_err(|_| ReadError::NotAscii);
            }

            prev_byte_was_cr = byte == b'\r';

            if buf.len() >= self.limits.max_line_bytes {
                return Err(ReadError::TooLarge(
                    too_long,
                    if too_long == 414 {
                        "request line too long"
                    } else {
                        "header line too long"
                    },
                ));
            }
            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let mut started = None;
            let (method, path, version) = {
                let line = self.read_next_line(&mut started, 414)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line(&mut started, 431)?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= self.limits.max_headers {
                        return Err(ReadError::TooLarge(431, "too many header lines"));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // runstream patch: refused here, before the request takes the connection's next
        // writer. Upstream refused it in `next`, writing the 505 into a second writer that
        // waits for the request's own: nothing was ever sent, and the unread body was then
        // parsed as the next request.
        if version > HTTPVersion(1, 1) {
            return Err(ReadError::UnsupportedVersion);
        }

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadFraming(reason) => {
                    ReadError::BadFraming(version, reason)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(400, "malformed request line");
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(400, "malformed header line");
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::NotAscii) => {
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(
                        400,
                        "the request line and headers must be ASCII (percent-encode the path)",
                    );
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::HeaderTimeout) => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(
                        408,
                        "the request headers did not arrive in time",
                    );
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::TooLarge(status, reason)) => {
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(status, reason);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // the rest of the request is unread: close
                }

                Err(ReadError::Idle) => return None,

                Err(ReadError::UnsupportedVersion) => {
                    let writer = self.sink.next().unwrap();
                    let response = self
                        .limits
                        .error_response(505, "this server speaks only versions 1.0 and 1.1 of HTTP");
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // the body is unread: close
                }

                Err(ReadError::BadFraming(ver, reason)) => {
                    let writer = self.sink.next().unwrap();
                    let response = self.limits.error_response(400, reason);
                    response.raw_print(writer, ver, &[], false, None).ok();
                    // where this request's body ends, and so the next request starts, is
                    // unknown: reading on would parse the body as a request (smuggling)
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                // runstream patch: said in the log (upstream closed without a word). Mostly
                // the client closing its end between requests, hence debug.
                Err(ReadError::ReadIoError(e)) => {
                    log::debug!("closing a connection: {}", e);
                    return None;
                }

                Ok(rq) => rq,
            };

            // checking HTTP version
            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
