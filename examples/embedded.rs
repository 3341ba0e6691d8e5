//! Embedding runstream in a plain sync program: build an `Engine`, mount the HTTP server on
//! it, submit a run, and print its stream — while browsers and curl can watch the same run.
//!
//! ```sh
//! cargo run --example embedded
//! ```

use std::sync::Arc;
use std::time::Duration;

use runstream::server::{Catalogue, Server, ServerConfig};
use runstream::{Engine, EngineConfig, Event, From, RunSpec};

fn main() {
    let data = std::env::temp_dir().join(format!("runstream-embedded-{}", std::process::id()));
    let engine = Arc::new(Engine::new(EngineConfig {
        log_dir: Some(data.join("runs")),
        ..EngineConfig::default()
    }));
    let server = Server::start(
        Arc::clone(&engine),
        Catalogue::default(),
        ServerConfig {
            bind: "127.0.0.1:0".parse().expect("a valid address"),
            ..ServerConfig::default()
        },
    )
    .expect("the server starts");

    let run = engine
        .submit(
            RunSpec::new("sh")
                .args([
                    "-c",
                    "for i in 1 2 3; do echo step $i; sleep 0.5; done; echo done >&2",
                ])
                .timeout(Duration::from_secs(60)),
        )
        .expect("the run is accepted");
    println!(
        "watch it: curl -N http://{}/api/runs/{}/logs/stream",
        server.addr(),
        run.id()
    );

    for event in run.subscribe(From::Start) {
        match event {
            Event::Entry(e) => println!("{:>3} [{}] {}", e.seq, e.stream.as_str(), e.message),
            Event::Status(s) => println!("    status: {}", s.status.as_str()),
            Event::Gap { from_seq, to_seq } => println!("    lost {from_seq}..={to_seq}"),
            Event::Gpu { memory_bytes, .. } => println!("    GPU memory: {memory_bytes:?} bytes"),
            Event::End(s) => println!(
                "    finished: {} (exit code {:?})",
                s.status.as_str(),
                s.exit_code
            ),
        }
    }
    server.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(data);
}
