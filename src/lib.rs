//! # runstream
//!
//! Run long jobs (ML training scripts, data jobs) as child processes, capture their stdout
//! and stderr live into bounded buffers (and a full log on disk), follow that output from
//! any number of readers, and stop the jobs cleanly: SIGTERM to the whole process group, a
//! grace period, then SIGKILL.
//!
//! It is synchronous and thread-based — no async runtime. Reader threads move the child's
//! bytes over a channel to one thread per run, which splits them into [`Entry`]s, appends
//! them to the run's [`OutputCapture`] ring and wakes its [`Subscription`]s.
//!
//! ```
//! use std::time::Duration;
//! use runstream::{Engine, EngineConfig, Event, From, RunSpec, RunState};
//!
//! let engine = Engine::new(EngineConfig::default());
//! let run = engine
//!     .submit(RunSpec::new("sh").args(["-c", "echo epoch 1; echo oops >&2; exit 3"]))
//!     .unwrap();
//! for event in run.subscribe(From::Start) {
//!     match event {
//!         Event::Entry(e) => println!("[{}] {} {}", e.stream.as_str(), e.level.as_str(), e.message),
//!         Event::Status(s) => println!("now {}", s.status.as_str()),
//!         Event::Gap { from_seq, to_seq } => println!("lost {from_seq}..={to_seq}"),
//!         Event::Gpu { memory_bytes, .. } => println!("GPU memory: {memory_bytes:?} bytes"),
//!         Event::End(s) => assert_eq!((s.status, s.exit_code), (RunState::Failed, Some(3))),
//!     }
//! }
//! // Stopping: SIGTERM to the group, SIGKILL after the grace period.
//! let long = engine.submit(RunSpec::new("sleep").arg("100").grace(Duration::from_secs(2))).unwrap();
//! long.cancel();
//! assert_eq!(long.wait().status, RunState::Cancelled);
//! ```
//!
//! The pieces, one file each: [`EngineConfig`] (settings and their defaults), [`RunSpec`]
//! (what to run), [`Engine`] and [`RunHandle`] (submit, follow, cancel, wait), [`OutputCapture`]
//! and [`Subscription`] (the ring and its readers), [`Entry`] (one captured line),
//! [`LineSplitter`] (bytes to lines), [`RunStatus`] (a run's state).

#![deny(missing_docs)]

mod admission;
mod capture;
mod config;
mod deadline;
mod engine;
mod entry;
pub mod gpu;
mod lines;
mod logfile;
pub mod metrics;
mod process;
mod run;
#[cfg(feature = "server")]
pub mod server;
mod spawn_error;
mod spec;
mod status;
mod timestamp;

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use capture::{CaptureStats, Event, From, Next, OutputCapture, Subscription};
pub use config::EngineConfig;
pub use engine::{Engine, RunHandle, SubmitError};
pub use entry::{Entry, Level, LineEnd, Stream};
pub use lines::{Line, LineSplitter};
pub use process::raise_open_file_limit;
#[cfg(target_os = "linux")]
pub use process::reap_orphans;
pub use process::Containment;
pub use spawn_error::SpawnErrorKind;
pub use spec::RunSpec;
pub use status::{RunState, RunStatus};
pub use timestamp::Timestamp;
