//! `runstream cancel RUN_ID...`: stops runs (SIGTERM to each run's process group, SIGKILL
//! after its grace period).

use clap::Args;

use super::http::{segment, Api, Connection};
use super::Failure;

/// What `runstream cancel` was asked to do.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The runs to stop
    #[arg(value_name = "RUN_ID", required = true)]
    runs: Vec<String>,
    #[command(flatten)]
    server: Connection,
}

/// Cancels each run and prints its state; a failure for one run does not stop the others.
/// The exit status is the first failure's.
pub fn run(args: CancelArgs) -> Result<i32, Failure> {
    let api = Api::new(&args.server)?;
    let mut first_failure = None;
    for id in &args.runs {
        match api.post(
            &format!("/api/runs/{}/cancel", segment(id)),
            &serde_json::json!({}),
        ) {
            Ok(run) => {
                let status = run["status"].as_str().unwrap_or("?");
                let stopping = if run["cancelling"] == true {
                    " (stopping)"
                } else {
                    ""
                };
                println!("{id} {status}{stopping}");
            }
            // Unreachable or refused: every other id would fail the same way.
            Err(e @ (Failure::Unreachable(_) | Failure::Unauthorized(_))) => return Err(e),
            Err(e) => {
                eprintln!("runstream: {id}: {e}");
                first_failure.get_or_insert(e.exit_code());
            }
        }
    }
    Ok(first_failure.unwrap_or(0))
}
