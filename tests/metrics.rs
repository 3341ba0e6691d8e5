//! Metrics read from the output (issue 13): extraction on entries and in series, the
//! `/api/runs/{id}/metrics` endpoint, `metric` SSE events and their resume, runs read again
//! from disk after a restart, and the example train module's declared pattern.

use std::sync::Arc;
use std::time::Duration;

use runstream::metrics::MetricSeries;
use runstream::server::{Catalogue, Server, ServerConfig};
use runstream::{Engine, EngineConfig, RunSpec, SubmitError};
use serde_json::{json, Value};

use crate::sse_client::{SseClient, SseEvent};
use crate::util::{collect, engine, sh};

/// Lines in the common formats, lines that only look like numbers, and a line whose tqdm
/// bar is drawn in pieces.
const SCRIPT: &str = r#"
echo "2026-11-29 12:00:01 INFO starting v2.1.0 on 10.0.0.1 with python 3.11"
echo "12:30:01 ERROR: code 3 after 3/10"
echo "Epoch 0: 100%|#####| 938/938 [00:12<00:00, 75.53it/s, train_loss=0.5]"
echo "1875/1875 [====] - 3s 1ms/step - loss: 0.2946 - accuracy: 91.5%"
echo "{'loss': 0.25, 'learning_rate': 4.9e-05, 'step': 10}"
echo '{"loss": 0.125, "step": 20}'
echo "epoch 3/20 loss 0.0625"
printf 'train_loss=0.'; sleep 0.4; echo 25
"#;

fn series<'a>(all: &'a [MetricSeries], name: &str) -> &'a MetricSeries {
    all.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no series {name} in {all:?}"))
}

#[test]
fn metrics_in_the_common_formats_reach_entries_and_series() {
    let engine = engine();
    let run = engine
        .submit(sh(SCRIPT).metric_pattern(r"epoch (?P<epoch>\d+)/\d+ loss (?P<loss>[-+.\deE]+)"))
        .unwrap();
    let (entries, _) = collect(&run);
    // The first two lines (timestamps, versions, addresses, codes, counts) carry none.
    assert!(entries[0].metrics().is_empty() && entries[1].metrics().is_empty());
    let all = run.metrics();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "train_loss",
            "loss",
            "accuracy",
            "learning_rate",
            "step",
            "epoch"
        ]
    );
    let loss = series(&all, "loss");
    // x is the seq for the Keras line, then the step the dict lines name: the series keeps
    // its first x (seq) and leaves out points on another x; last/min/max see every value.
    assert_eq!(loss.x, "seq");
    assert_eq!(
        (loss.count, loss.last, loss.min, loss.max),
        (4, 0.0625, 0.0625, 0.2946)
    );
    assert_eq!(series(&all, "accuracy").last, 91.5);
    assert_eq!(series(&all, "learning_rate").x, "step");
    assert_eq!(series(&all, "learning_rate").points[0].x, 10.0);
    // The line printed in two pieces is read once, whole, on the entry that ends it.
    let train = series(&all, "train_loss");
    assert_eq!(train.count, 2);
    assert_eq!(train.last, 0.25);
    let piece = entries
        .iter()
        .find(|e| e.message == "train_loss=0.")
        .unwrap();
    assert!(piece.metrics().is_empty());
    let end = entries.iter().find(|e| e.seq == train.last_seq).unwrap();
    assert_eq!(end.metrics()[0].y, 0.25);
}

#[test]
fn a_bad_metric_pattern_is_refused_at_submit() {
    let engine = engine();
    for bad in ["(unclosed", "no named group"] {
        match engine.submit(sh("true").metric_pattern(bad)) {
            Err(SubmitError::InvalidSpec(why)) => assert!(why.contains(bad), "{why}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

struct TestServer {
    server: Server,
    base: String,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown(Duration::from_secs(5));
    }
}

fn start(dir: &std::path::Path, ring_max_entries: usize, catalogue: Catalogue) -> TestServer {
    let engine = Arc::new(Engine::new(EngineConfig {
        log_dir: Some(dir.join("runs")),
        ring_max_entries,
        ..EngineConfig::default()
    }));
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::start(engine, catalogue, config).unwrap();
    let base = format!("http://{}", server.addr());
    TestServer { server, base }
}

fn steps_catalogue() -> Catalogue {
    // Ten lines with a step and two metrics, a line without metrics between each.
    let script = r#"i=1; while [ $i -le 10 ]; do echo "step=$i loss=$((100 - i)).5 acc=$i%"; echo "plain $i"; i=$((i+1)); done"#;
    serde_json::from_value(json!({"modules": {
        "steps": {"name": "Steps", "program": "sh", "args": ["-c", script]},
    }}))
    .unwrap()
}

fn get(base: &str, path: &str) -> (u16, String, String) {
    let resp = match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = resp.status();
    let kind = resp.content_type().to_string();
    (status, kind, resp.into_string().unwrap())
}

fn run_and_wait(s: &TestServer, module: &str, params: Value) -> String {
    let resp = ureq::post(&format!("{}/api/modules/{module}/run", s.base))
        .send_json(json!({"parameters": params}))
        .unwrap();
    let id = resp.into_json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.server.engine().get(&id).unwrap().wait();
    id
}

#[test]
fn the_metrics_endpoint_answers_json_names_csv_and_404() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), 10_000, steps_catalogue());
    let id = run_and_wait(&s, "steps", json!({}));
    let (status, kind, body) = get(&s.base, &format!("/api/runs/{id}/metrics"));
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["run_id"], id);
    let names: Vec<&str> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["step", "loss", "acc"]);
    let loss = &v["series"][1];
    assert_eq!(loss["x"], "step");
    assert_eq!(loss["points"][0], json!([1.0, 99.5]));
    assert_eq!(loss["points"][9], json!([10.0, 90.5]));
    assert_eq!(
        (&loss["last"], &loss["min"], &loss["max"]),
        (&json!(90.5), &json!(90.5), &json!(99.5))
    );

    let (_, _, body) = get(&s.base, &format!("/api/runs/{id}/metrics?names=acc,nope"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["series"].as_array().unwrap().len(), 1);
    assert_eq!(v["series"][0]["points"][2], json!([3.0, 3.0]));

    let (status, kind, csv) = get(
        &s.base,
        &format!("/api/runs/{id}/metrics?format=csv&names=loss"),
    );
    assert_eq!((status, kind.as_str()), (200, "text/csv"));
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "name,x,y,seq,timestamp");
    assert_eq!(rows.len(), 11);
    let first: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(&first[..4], ["loss", "1", "99.5", "0"]);
    assert!(first[4].ends_with('Z'), "{}", rows[1]);

    let (status, _, body) = get(&s.base, "/api/runs/run_nope/metrics");
    assert_eq!(status, 404);
    assert!(body.contains("RUN_NOT_FOUND"), "{body}");
    let (status, _, _) = get(&s.base, &format!("/api/runs/{id}/metrics?format=xml"));
    assert_eq!(status, 422);
}

/// The events of a stream up to `complete`, without the first `retry`/`status` ones.
fn stream(s: &TestServer, id: &str, headers: &[&str]) -> Vec<SseEvent> {
    let path = format!("/api/runs/{id}/logs/stream");
    let mut client = SseClient::connect(s.server.addr(), &path, headers);
    assert_eq!(client.status, 200);
    client
        .rest()
        .into_iter()
        .filter(|e| e.event == "log" || e.event == "metric")
        .collect()
}

#[test]
fn metric_events_follow_their_line_and_resume_like_log_events() {
    let dir = tempfile::tempdir().unwrap();
    // A ring of 4 entries: most of the replay is read back from the log.
    let s = start(dir.path(), 4, steps_catalogue());
    let id = run_and_wait(&s, "steps", json!({}));
    let events = stream(&s, &id, &[]);
    // Line 0: `step=1 loss=99.5 acc=1%` → its log event, then three metric events, all
    // with the line's seq as their id.
    let shape: Vec<(&str, Option<u64>)> = events[..6]
        .iter()
        .map(|e| (e.event.as_str(), e.id))
        .collect();
    assert_eq!(
        shape,
        [
            ("log", Some(0)),
            ("metric", Some(0)),
            ("metric", Some(0)),
            ("metric", Some(0)),
            ("log", Some(1)),
            ("log", Some(2))
        ]
    );
    assert_eq!(
        events[2].json(),
        json!({"name": "loss", "x": 1.0, "y": 99.5, "seq": 0})
    );
    let metrics = |events: &[SseEvent]| -> Vec<(u64, String, f64)> {
        events
            .iter()
            .filter(|e| e.event == "metric")
            .map(|e| {
                let v = e.json();
                (
                    v["seq"].as_u64().unwrap(),
                    v["name"].as_str().unwrap().to_string(),
                    v["y"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let all = metrics(&events);
    assert_eq!(all.len(), 30);
    // Resuming after seq 5 (`plain 3`): the metrics from `step=4` (seq 6) on, once each.
    let resumed = stream(&s, &id, &["Last-Event-ID: 5"]);
    assert_eq!(resumed[0].event, "log");
    assert_eq!(resumed[0].json()["seq"], 6);
    assert_eq!(metrics(&resumed), all[9..].to_vec());
}

#[test]
fn finished_runs_answer_metrics_from_disk_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (id, before) = {
        let s = start(dir.path(), 10_000, steps_catalogue());
        let id = run_and_wait(&s, "steps", json!({}));
        (
            id.clone(),
            get(&s.base, &format!("/api/runs/{id}/metrics")).2,
        )
    };
    let s = start(dir.path(), 10_000, steps_catalogue());
    let (status, _, after) = get(&s.base, &format!("/api/runs/{id}/metrics"));
    assert_eq!(status, 200);
    let strip = |text: &str| {
        let mut v: Value = serde_json::from_str(text).unwrap();
        v.as_object_mut().unwrap().remove("through_seq");
        v
    };
    assert_eq!(strip(&after), strip(&before));
    assert_eq!(strip(&after)["series"].as_array().unwrap().len(), 3);
}

#[test]
fn the_example_train_module_charts_one_loss_point_per_epoch() {
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        // Said on stderr, which cargo test shows with --nocapture (and on failure).
        eprintln!("SKIPPED the example train module: no python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let catalogue = Catalogue::load(std::path::Path::new("examples/modules.json")).unwrap();
    let s = start(dir.path(), 10_000, catalogue);
    let id = run_and_wait(&s, "train", json!({"epochs": 5, "steps": 2}));
    let run = s.server.engine().get(&id).unwrap();
    let printed: Vec<f64> = run
        .capture()
        .read(0, 1000)
        .0
        .iter()
        .filter_map(|e| e.message.strip_prefix("epoch "))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(printed.len(), 5);
    let all = run.metrics();
    let loss = series(&all, "loss");
    assert_eq!(loss.x, "epoch");
    let points: Vec<(f64, f64)> = loss.points.iter().map(|p| (p.x, p.y)).collect();
    let want: Vec<(f64, f64)> = printed
        .iter()
        .enumerate()
        .map(|(i, y)| ((i + 1) as f64, *y))
        .collect();
    assert_eq!(points, want);
}

#[test]
fn a_run_spec_pattern_survives_in_the_status_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig {
        log_dir: Some(dir.path().to_path_buf()),
        ..EngineConfig::default()
    });
    let run = engine
        .submit(
            RunSpec::new("echo")
                .arg("iteration 7 took 3")
                .metric_pattern(r"iteration (?P<iter>\d+) took (?P<secs>\d+)"),
        )
        .unwrap();
    run.wait();
    let status: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("{}.json", run.id()))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        status["metric_patterns"][0],
        r"iteration (?P<iter>\d+) took (?P<secs>\d+)"
    );
    let all = run.metrics();
    assert_eq!(
        (
            series(&all, "secs").x.as_str(),
            series(&all, "secs").points[0].x
        ),
        ("iter", 7.0)
    );
}

#[test]
fn run_metrics_prints_the_table_on_stderr_and_json_stays_clean() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runstream"))
        .args(["run", "--metrics", "--json", "--", "sh", "-c"])
        .arg("for l in 0.5 0.25 0.375; do echo \"loss=$l acc=$l\"; done; echo done")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in stdout.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    let table: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('[')).collect();
    assert_eq!(
        table,
        [
            "metric   last   min  max  values",
            "loss    0.375  0.25  0.5       3",
            "acc     0.375  0.25  0.5       3"
        ],
        "{stderr}"
    );
}

#[test]
fn a_catalogue_with_a_bad_metric_pattern_is_refused_naming_the_field() {
    let catalogue: Catalogue = serde_json::from_value(json!({"modules": {
        "m": {"name": "M", "program": "true", "metric_patterns": ["loss (?P<loss>"]},
    }}))
    .unwrap();
    let err = catalogue.check().unwrap_err();
    assert!(err.contains("modules.m.metric_patterns"), "{err}");
    assert!(err.contains("loss (?P<loss>"), "{err}");
}
