//! `runstream modules`: a server's module catalogue.

use clap::Args;
use serde_json::Value;

use super::http::{Api, Connection};
use super::{table, Failure};

/// What `runstream modules` was asked to do.
#[derive(Debug, Args)]
pub struct ModulesArgs {
    /// One JSON object per module, one per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Connection,
}

/// Lists the modules with their parameters and defaults.
pub fn run(args: ModulesArgs) -> Result<i32, Failure> {
    let api = Api::new(&args.server)?;
    let answer = api.get("/api/modules", &[])?;
    let modules = answer["modules"].as_array().cloned().unwrap_or_default();
    let printed = if args.json {
        modules.iter().try_for_each(|m| {
            use std::io::Write;
            writeln!(std::io::stdout(), "{m}")
        })
    } else {
        let rows: Vec<Vec<String>> = modules
            .iter()
            .map(|m| {
                vec![
                    m["id"].as_str().unwrap_or("-").to_string(),
                    m["name"].as_str().unwrap_or("-").to_string(),
                    parameters(&m["parameters"]),
                ]
            })
            .collect();
        table::print(&["MODULE", "NAME", "PARAMETERS"], &rows)
    };
    printed.map_err(|e| Failure::Server(format!("cannot write the list: {e}")))?;
    Ok(0)
}

/// `epochs=3 lr=0.001 name` (a parameter without a default is shown bare).
fn parameters(parameters: &Value) -> String {
    let Some(map) = parameters.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(name, p)| match &p["default"] {
            Value::Null => name.clone(),
            Value::String(s) => format!("{name}={s}"),
            other => format!("{name}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
