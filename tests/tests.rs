//! Integration tests: one binary, one module per topic. Every test spawns real processes.

mod cli;
mod engine;
mod gpu;
mod server;
mod server_process;
mod sse_client;
mod util;
