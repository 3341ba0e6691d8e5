//! `runstream logs RUN_ID`: a run's output, like `docker logs`; with `-f`, followed live
//! over SSE until the run ends, resuming with `Last-Event-ID` across dropped connections
//! and server restarts (no line is printed twice). `start --follow` uses the same loop.

use std::time::{Duration, Instant};

use clap::Args;
use runstream::{Entry, Timestamp};
use serde_json::Value;

use super::http::{segment, Api, Connection};
use super::Failure;
use crate::printer::{Printer, Style};
use crate::values::parse_duration;

/// Most entries one `GET …/logs` returns (the server's cap).
const PAGE: u64 = 100_000;
/// How long `-f` keeps trying to reconnect to a server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Pause between two reconnection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What `runstream logs` was asked to do.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run
    #[arg(value_name = "RUN_ID")]
    run_id: String,
    /// Follow the output until the run ends (resumes across dropped connections and
    /// server restarts for up to a minute each)
    #[arg(long, short)]
    follow: bool,
    /// Only the last N lines (then, with -f, what comes)
    #[arg(long, short = 'n', value_name = "N")]
    tail: Option<u64>,
    /// Only lines since TIME: an ISO-8601 time (2026-11-29T16:00:00Z) or a duration ago
    /// (90s, 10m, 2h)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<Timestamp>,
    /// Start each line with its entry's timestamp
    #[arg(long, short)]
    timestamps: bool,
    /// Every entry as one JSON line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Connection,
}

/// An ISO-8601 time, or a duration before now.
fn parse_since(text: &str) -> Result<Timestamp, String> {
    if let Some(t) = Timestamp::parse(text) {
        return Ok(t);
    }
    let ago = parse_duration(text)
        .map_err(|_| format!("takes an ISO-8601 time or a duration ago (10m), got {text:?}"))?;
    let micros = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
    Ok(Timestamp::from_micros(
        Timestamp::now().as_micros().saturating_sub(micros),
    ))
}

/// Prints the run's output (and follows it with `-f`).
pub fn run(args: LogsArgs) -> Result<i32, Failure> {
    let api = Api::new(&args.server)?;
    let run_path = format!("/api/runs/{}", segment(&args.run_id));
    let mut output = Output::new(Style {
        json: args.json,
        timestamps: args.timestamps,
    });
    let after = history(&api, &run_path, args.tail, args.since, &mut output)?;
    if args.follow {
        output.last_seq = after;
        follow(&api, &run_path, &mut output)?;
    }
    output.printer.finish();
    Ok(0)
}

/// Prints what the run has so far (its last `tail` entries, or all of them since
/// `since`); returns the seq the stream should resume after.
fn history(
    api: &Api,
    run_path: &str,
    tail: Option<u64>,
    since: Option<Timestamp>,
    output: &mut Output,
) -> Result<Option<u64>, Failure> {
    let path = format!("{run_path}/logs");
    let mut resume = None;
    let mut after_seq: Option<u64> = None;
    loop {
        let mut query = match tail {
            Some(n) => vec![("tail", n.min(PAGE).to_string())],
            None => vec![
                ("tail", PAGE.to_string()),
                // Everything: since the start of time unless told otherwise.
                (
                    "since",
                    since.unwrap_or(Timestamp::from_micros(0)).to_string(),
                ),
            ],
        };
        if let Some(seq) = after_seq {
            query.push(("after_seq", seq.to_string()));
        }
        let page = api.get(&path, &query)?;
        let total = page["total_lines"].as_u64().unwrap_or(0);
        resume = resume.max(total.checked_sub(1));
        let entries: Vec<Entry> = page["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Entry::from_json(&e.to_string()))
            .collect();
        for entry in &entries {
            output.entry(entry)?;
        }
        after_seq = entries.last().map(|e| e.seq);
        if tail.is_some() || page["truncated"] != true || after_seq.is_none() {
            return Ok(resume.max(output.last_seq));
        }
    }
}

/// Follows the run's stream until its `complete` event (or 204: over and all seen);
/// returns the `complete` data, if one came.
pub fn follow(api: &Api, run_path: &str, output: &mut Output) -> Result<Option<Value>, Failure> {
    let path = format!("{run_path}/logs/stream");
    let mut down_since: Option<Instant> = None;
    loop {
        match api.stream(&path, output.last_seq, &[]) {
            Ok(None) => return Ok(None),
            Ok(Some(mut events)) => {
                down_since = None;
                // Until the stream ends or breaks; then reconnect after the last seq seen.
                while let Ok(Some(event)) = events.next_event() {
                    match event.event.as_str() {
                        "log" => {
                            if let Some(entry) = Entry::from_json(&event.data) {
                                output.entry(&entry)?;
                            }
                        }
                        "gap" => {
                            let gap: Value = serde_json::from_str(&event.data).unwrap_or_default();
                            let (from, to) = (gap["from_seq"].as_u64(), gap["to_seq"].as_u64());
                            if let (Some(from), Some(to)) = (from, to) {
                                eprintln!(
                                    "runstream: lines {from} to {to} were lost by the server"
                                );
                                output.last_seq = output.last_seq.max(Some(to));
                            }
                        }
                        "complete" => {
                            return Ok(Some(serde_json::from_str(&event.data).unwrap_or_default()))
                        }
                        _ => {}
                    }
                }
            }
            Err(Failure::Unreachable(why)) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECONNECT_FOR {
                    return Err(Failure::Unreachable(format!(
                        "{why} (gave up after {} s)",
                        RECONNECT_FOR.as_secs()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The printer, and the last seq printed (what a reconnection resumes after).
pub struct Output {
    pub printer: Printer,
    pub last_seq: Option<u64>,
}

impl Output {
    pub fn new(style: Style) -> Output {
        Output {
            printer: Printer::new(style),
            last_seq: None,
        }
    }

    /// Prints an entry unless it was printed already (a stream that resumed).
    fn entry(&mut self, entry: &Entry) -> Result<(), Failure> {
        if self.last_seq.is_some_and(|last| entry.seq <= last) {
            return Ok(());
        }
        self.last_seq = Some(entry.seq);
        match self.printer.print(std::slice::from_ref(entry)) {
            // Whoever read our output went away (`| head`): stop quietly, as `run` does.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
            Err(e) => Err(Failure::Server(format!("cannot write to stdout: {e}"))),
            Ok(()) => Ok(()),
        }
    }
}
