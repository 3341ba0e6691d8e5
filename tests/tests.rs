//! Integration tests: one binary, one module per topic. Every test spawns real processes.
//!
//! Modules that drive `sh`, coreutils, `/proc` or unix signals are unix-only; `portable`
//! runs everywhere through the `runstream-test-child` helper, and `windows` checks the job
//! object and CTRL_BREAK path (run under wine in CI: see docs/PLATFORMS.md).

#[cfg(unix)]
mod cli;
#[cfg(unix)]
mod client;
#[cfg(unix)]
mod containment;
#[cfg(target_os = "linux")]
mod crash_orphans;
#[cfg(unix)]
mod engine;
#[cfg(unix)]
mod gpu;
#[cfg(unix)]
mod gpu_nvml;
#[cfg(unix)]
mod http_limits;
#[cfg(unix)]
mod metrics;
#[cfg(target_os = "linux")]
mod pid1;
mod portable;
#[cfg(unix)]
mod proxy;
#[cfg(unix)]
mod reliability;
#[cfg(unix)]
mod screen;
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod server_process;
mod sse_client;
#[cfg(unix)]
mod terminal;
mod util;
#[cfg(windows)]
mod windows;
