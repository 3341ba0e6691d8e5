//! Placeholder replaced by the capture benchmark.
fn main() {}
