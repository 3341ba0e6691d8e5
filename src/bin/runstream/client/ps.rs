//! `runstream ps`: a table of a server's runs.

use clap::Args;
use serde_json::Value;

use super::http::{Api, Connection};
use super::{table, Failure};

/// Most runs one page of `GET /api/runs` holds.
const PAGE: usize = 1000;

/// What `runstream ps` was asked to do.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Every run, not only queued and running ones
    #[arg(long, short)]
    all: bool,
    /// Only runs in these states (queued, running, completed, failed, cancelled,
    /// timed_out; repeatable or comma-separated)
    #[arg(long, value_name = "S")]
    status: Vec<String>,
    /// One JSON object per run, one per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Connection,
}

/// Lists the runs, newest first.
pub fn run(args: PsArgs) -> Result<i32, Failure> {
    let api = Api::new(&args.server)?;
    let status = match (&args.status[..], args.all) {
        ([], false) => "queued,running".to_string(),
        (given, _) => given.join(","),
    };
    let mut runs: Vec<Value> = Vec::new();
    loop {
        let mut query = vec![
            ("limit", PAGE.to_string()),
            ("offset", runs.len().to_string()),
        ];
        if !status.is_empty() {
            query.push(("status", status.clone()));
        }
        let page = api.get("/api/runs", &query)?;
        let got = page["runs"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let done = got.len() < PAGE;
        runs.extend(got);
        if done || runs.len() >= total {
            break;
        }
    }
    let printed = if args.json {
        runs.iter().try_for_each(|r| {
            use std::io::Write;
            writeln!(std::io::stdout(), "{r}")
        })
    } else {
        let rows: Vec<Vec<String>> = runs.iter().map(row).collect();
        table::print(
            &[
                "RUN ID", "MODULE", "STATUS", "STARTED", "DURATION", "EXIT", "PROGRESS", "GPU MEM",
            ],
            &rows,
        )
    };
    printed.map_err(|e| Failure::Server(format!("cannot write the list: {e}")))?;
    Ok(0)
}

fn row(run: &Value) -> Vec<String> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut status = text(&run["status"]);
    if run["cancelling"] == true {
        status.push_str(" (cancelling)");
    }
    let exit = match (run["exit_code"].as_i64(), run["signal"].as_i64()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "-".into(),
    };
    let progress = run["progress_percent"]
        .as_f64()
        .map_or("-".into(), |p| format!("{p:.0}%"));
    vec![
        text(&run["run_id"]),
        text(&run["module_id"]),
        status,
        table::time(&run["started_at"]),
        table::duration(&run["duration_seconds"]),
        exit,
        progress,
        table::bytes(&run["gpu_memory_bytes"]),
    ]
}
