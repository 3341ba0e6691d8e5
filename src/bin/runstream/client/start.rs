//! `runstream start MODULE`: starts a module on a server and prints the run id; with
//! `--follow`, streams the run's output like `runstream run` and exits with its status.

use clap::Args;
use runstream::{RunState, SpawnErrorKind};
use serde_json::{Map, Value};

use super::http::{segment, Api, Connection};
use super::logs::{follow, Output};
use super::Failure;
use crate::printer::Style;
use crate::values::parse_env;

/// What `runstream start` was asked to do.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The module (see `runstream modules`)
    #[arg(value_name = "MODULE")]
    module: String,
    /// A parameter (repeatable); VALUE is read as the parameter's type
    #[arg(long = "param", short, value_name = "NAME=VALUE", value_parser = parse_env)]
    params: Vec<(String, String)>,
    /// Stream the run's output until it ends, and exit with its exit status
    #[arg(long, short)]
    follow: bool,
    /// With --follow: every entry as one JSON line
    #[arg(long, requires = "follow")]
    json: bool,
    #[command(flatten)]
    server: Connection,
}

/// Starts the run; prints its id (on stderr when following, so stdout is the run's).
pub fn run(args: StartArgs) -> Result<i32, Failure> {
    let api = Api::new(&args.server)?;
    let module_path = format!("/api/modules/{}", segment(&args.module));
    let module = api.get(&module_path, &[])?;
    let mut parameters = Map::new();
    for (name, text) in &args.params {
        let kind = module["parameters"][name]["type"]
            .as_str()
            .unwrap_or("string");
        parameters.insert(name.clone(), typed(name, kind, text)?);
    }
    let body = serde_json::json!({ "parameters": parameters });
    let run = api.post(&format!("{module_path}/run"), &body)?;
    let id = run["run_id"].as_str().unwrap_or_default().to_string();
    if !args.follow {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("runstream: started {id}");
    let run_path = format!("/api/runs/{}", segment(&id));
    let mut output = Output::new(Style {
        json: args.json,
        timestamps: false,
    });
    follow(&api, &run_path, &mut output)?;
    output.printer.finish();
    // The final state, whether the stream ended with `complete` or with 204.
    let run = api.get(&run_path, &[])?;
    Ok(exit_status(&run))
}

/// `text` as a JSON value of the parameter's type.
fn typed(name: &str, kind: &str, text: &str) -> Result<Value, Failure> {
    let bad = || {
        Failure::Invalid(format!(
            "parameter {name} takes {kind} values, got {text:?}"
        ))
    };
    match kind {
        "integer" => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad()),
        "number" => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(bad),
        "boolean" => match text.trim() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        _ => Ok(Value::String(text.to_string())),
    }
}

/// The run's exit status, by `runstream run`'s rules (a cancelled run: 130, as if
/// stopped with Ctrl-C).
fn exit_status(run: &Value) -> i32 {
    let state: RunState = serde_json::from_value(run["status"].clone()).unwrap_or(RunState::Failed);
    let spawn_error: Option<SpawnErrorKind> =
        serde_json::from_value(run["spawn_error"].clone()).ok();
    crate::run_command::exit_code(
        state,
        run["exit_code"].as_i64().map(|c| c as i32),
        run["signal"].as_i64().map(|s| s as i32),
        spawn_error,
        130,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_take_their_declared_type() {
        assert_eq!(typed("e", "integer", "3").unwrap(), json!(3));
        assert_eq!(typed("lr", "number", "0.5").unwrap(), json!(0.5));
        assert_eq!(typed("f", "boolean", "yes").unwrap(), json!(true));
        assert_eq!(typed("s", "string", "3").unwrap(), json!("3"));
        for (kind, bad) in [("integer", "3.5"), ("number", "x"), ("boolean", "maybe")] {
            let e = typed("p", kind, bad).unwrap_err();
            assert_eq!(e.exit_code(), 65);
            assert!(e.to_string().contains("parameter p"), "{e}");
        }
    }

    #[test]
    fn a_followed_run_exits_like_runstream_run() {
        let status = |v: Value| exit_status(&v);
        assert_eq!(status(json!({"status": "completed", "exit_code": 0})), 0);
        assert_eq!(status(json!({"status": "failed", "exit_code": 3})), 3);
        assert_eq!(status(json!({"status": "failed", "signal": 9})), 137);
        assert_eq!(status(json!({"status": "timed_out", "signal": 15})), 124);
        assert_eq!(status(json!({"status": "cancelled", "signal": 15})), 130);
        assert_eq!(status(json!({"status": "failed"})), 126);
        assert_eq!(
            status(json!({"status": "failed", "spawn_error": "not_found"})),
            127
        );
    }
}
