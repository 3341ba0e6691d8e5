//! Client subcommands (`ps`, `start`, `logs`, `cancel`, `modules`): they speak a running
//! `runstream serve`'s HTTP API, one file per verb; `http.rs` is the connection, `sse.rs`
//! reads event streams, `table.rs` prints tables.

pub mod cancel;
pub mod http;
pub mod logs;
pub mod modules;
pub mod ps;
mod sse;
pub mod start;
mod table;

use std::fmt;

/// Why a client command failed; each kind has its own exit status (README: "The
/// terminal tool"), numbered as in BSD's sysexits so that they do not collide with the
/// usual statuses of a run followed by `start --follow`.
#[derive(Debug)]
pub enum Failure {
    /// The server could not be reached (refused, timed out, no such host). Exit 69.
    Unreachable(String),
    /// The token is missing or wrong (401, 403). Exit 77.
    Unauthorized(String),
    /// No such run or module (404). Exit 66.
    NotFound(String),
    /// The server refused the request's content: a bad parameter, a run already finished
    /// (422, 400). Exit 65.
    Invalid(String),
    /// Anything else: a server error, an answer that is not the API's. Exit 70.
    Server(String),
}

impl Failure {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable(_) => 69,
            Failure::Unauthorized(_) => 77,
            Failure::NotFound(_) => 66,
            Failure::Invalid(_) => 65,
            Failure::Server(_) => 70,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Failure::Unreachable(m)
            | Failure::Unauthorized(m)
            | Failure::NotFound(m)
            | Failure::Invalid(m)
            | Failure::Server(m) => f.write_str(m),
        }
    }
}

/// Runs a client command: its exit status, or the failure said in one line.
pub fn exit_status(result: Result<i32, Failure>) -> i32 {
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("runstream: {failure}");
            failure.exit_code()
        }
    }
}
