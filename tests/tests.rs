//! Integration tests: one binary, one module per topic. Every test spawns real processes.

mod cli;
mod engine;
mod server;
mod sse_client;
mod util;
