//! Integration tests: one binary, one module per topic. Every test spawns real processes.

mod engine;
mod util;
