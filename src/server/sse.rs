//! Server-Sent Events for one run: one thread per connection, a `Subscription` cursor over
//! the run's capture, chunked writes flushed after every event.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use tiny_http::Request;

use super::http::StreamingResponse;
use super::run_json::{complete_json, run_json};
use crate::{Next, RunHandle, Subscription};

/// Streams `sub` to the client until the run ends (then `complete` and the chunked
/// terminator) or the client leaves (a write fails). Idle streams get a keep-alive
/// comment every `keep_alive`.
pub fn stream(
    request: Request,
    run: &RunHandle,
    mut sub: Subscription,
    keep_alive: Duration,
    retry: Duration,
    extra_headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut headers = vec![
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    ];
    headers.extend_from_slice(extra_headers);
    let mut out = StreamingResponse::start(request, "200 OK", &headers)?;
    out.chunk(format!("retry: {}\n\n", retry.as_millis()).as_bytes())?;
    // A finished run's stream is a replay: its first status is how it ended, not the
    // `running` it was at seq 0 (a page's badge would flicker back to running), and the
    // statuses it passed through on the way are history, not news.
    let finished = run.status();
    let replay = finished.status.is_finished();
    if replay {
        out.chunk(format!("event: status\ndata: {}\n\n", run_json(&finished)).as_bytes())?;
    }
    let mut buf = String::new();
    let mut digits = [0u8; 20];
    loop {
        buf.clear();
        match sub.next(keep_alive) {
            Next::Entries(entries) => {
                // The hot path of fan-out: plain appends of the shared encoding.
                buf.reserve(entries.iter().map(|e| e.json().len() + 40).sum());
                for e in &entries {
                    let id = crate::entry::u64_text(e.seq, &mut digits);
                    buf.push_str("id: ");
                    buf.push_str(id);
                    buf.push_str("\nevent: log\ndata: ");
                    buf.push_str(e.json());
                    buf.push_str("\n\n");
                    // Its metric events follow it, before the next line, with the same
                    // id: every log event keeps its own `id:` (what clients resume and
                    // deduplicate by), and a metric event says whose line it is.
                    for m in e.metrics() {
                        let _ = write!(
                            buf,
                            "id: {id}\nevent: metric\ndata: {}\n\n",
                            m.event_json(e.seq)
                        );
                    }
                }
            }
            Next::Gap { from_seq, to_seq } => {
                let _ = write!(
                    buf,
                    "event: gap\ndata: {{\"from_seq\":{from_seq},\"to_seq\":{to_seq}}}\n\n"
                );
            }
            Next::Gpu {
                memory_bytes,
                peak_bytes,
                utilization_percent,
            } => {
                // null where unknown, never a made-up 0.
                let data = serde_json::json!({
                    "gpu_memory_bytes": memory_bytes,
                    "gpu_memory_peak_bytes": peak_bytes,
                    "gpu_utilization_percent": utilization_percent,
                });
                let _ = write!(buf, "event: gpu\ndata: {data}\n\n");
            }
            Next::Status(_) if replay => continue,
            Next::Status(status) => {
                let _ = write!(buf, "event: status\ndata: {}\n\n", run_json(&status));
            }
            Next::End(status) => {
                let _ = write!(buf, "event: complete\ndata: {}\n\n", complete_json(&status));
                out.chunk(buf.as_bytes())?;
                log::debug!("stream of {} complete", run.id());
                return out.finish();
            }
            Next::Timeout => buf.push_str(": keep-alive\n\n"),
        }
        out.chunk(buf.as_bytes())?;
    }
}
