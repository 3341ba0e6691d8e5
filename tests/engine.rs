//! The core engine, through its public library API (issue 2's list, in order).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use runstream::{
    Engine, EngineConfig, Event, From, Level, LineEnd, Next, RunSpec, RunState, Stream,
};

use crate::util::*;

#[test]
fn stdout_and_stderr_are_captured_separately_and_tagged() {
    let engine = engine();
    let run = engine
        .submit(sh(
            "echo out1; echo err1 >&2; echo 'WARNING: careful'; echo done",
        ))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed);
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(
        texts(&entries, Stream::Stdout),
        ["out1", "WARNING: careful", "done"]
    );
    assert_eq!(texts(&entries, Stream::Stderr), ["err1"]);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64, "seqs are contiguous from 0");
        if i > 0 {
            assert!(e.timestamp >= entries[i - 1].timestamp);
        }
    }
    let find = |m: &str| entries.iter().find(|e| e.message == m).unwrap().clone();
    assert_eq!(
        (find("out1").level, find("out1").end),
        (Level::Info, LineEnd::Lf)
    );
    assert_eq!(find("err1").level, Level::Error);
    assert_eq!(find("WARNING: careful").level, Level::Warning);
    let system = texts(&entries, Stream::System);
    assert!(
        system.iter().any(|m| m == "exited with code 0"),
        "{system:?}"
    );
    // The JSON encoding is the documented shape.
    let json: serde_json::Value = serde_json::from_str(find("err1").json()).unwrap();
    assert_eq!(json["stream"], "stderr");
    assert_eq!(json["level"], "ERROR");
    assert_eq!(json["end"], "lf");
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn carriage_returns_make_progress_entries() {
    let engine = engine();
    let run = engine
        .submit(RunSpec::new("printf").arg("a\\rb\\rc\\n"))
        .unwrap();
    let (entries, _) = collect(&run);
    let got: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stdout)
        .map(|e| (e.message.as_str(), e.end))
        .collect();
    assert_eq!(
        got,
        [("a", LineEnd::Cr), ("b", LineEnd::Cr), ("c", LineEnd::Lf)]
    );
}

#[test]
fn tqdm_progress_on_stderr_is_info_and_sets_progress_percent() {
    let engine = engine();
    let run = engine
        .submit(sh(
            r"for p in 10 50 100; do printf '\r%3d%%|###' $p >&2; done; printf '\n' >&2",
        ))
        .unwrap();
    let (entries, status) = collect(&run);
    let bars: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stderr)
        .collect();
    assert_eq!(bars.len(), 3, "{bars:?}");
    assert!(bars[..2]
        .iter()
        .all(|e| e.end == LineEnd::Cr && e.level == Level::Info));
    assert_eq!(bars[2].message, "100%|###");
    assert_eq!(status.progress_percent, Some(100.0));
}

#[test]
fn a_slow_progress_bar_flushed_in_pieces_still_says_each_redraw() {
    // Each update is handed out as a `none` piece while the child is quiet (here: until
    // the test opens a gate), so the `\r` that starts the next update must end that line.
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let run = engine
        .submit(
            sh(r#"printf '\r 10%%|#' >&2
                  while [ ! -e gate ]; do sleep 0.01; done
                  printf '\r 20%%|##' >&2
                  while [ ! -e gate2 ]; do sleep 0.01; done
                  printf '\n' >&2"#)
            .cwd(dir.path()),
        )
        .unwrap();
    wait_for_entry(&run, |e| e.message == " 10%|#");
    std::fs::write(dir.path().join("gate"), "").unwrap();
    wait_for_entry(&run, |e| e.message == " 20%|##");
    std::fs::write(dir.path().join("gate2"), "").unwrap();
    let (entries, status) = collect(&run);
    let got: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stderr)
        .map(|e| (e.message.as_str(), e.end, e.level))
        .collect();
    assert_eq!(
        got,
        [
            (" 10%|#", LineEnd::None, Level::Info),
            ("", LineEnd::Cr, Level::Info),
            (" 20%|##", LineEnd::None, Level::Info),
            // The bar's final newline is the bar's, not an empty stderr "error".
            ("", LineEnd::Lf, Level::Info),
        ]
    );
    assert_eq!(status.progress_percent, Some(20.0));
}

#[test]
fn a_partial_line_appears_while_the_child_still_runs() {
    let engine = engine();
    let run = engine
        .submit(sh("printf 'loading...'; exec sleep 100"))
        .unwrap();
    let entry = wait_for_entry(&run, |e| e.stream == Stream::Stdout);
    assert_eq!(
        (entry.message.as_str(), entry.end),
        ("loading...", LineEnd::None)
    );
    assert_eq!(
        run.status().status,
        RunState::Running,
        "seen before the child exited"
    );
    run.cancel();
    assert_eq!(run.wait().status, RunState::Cancelled);
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let engine = engine();
    let run = engine
        .submit(RunSpec::new("printf").arg("ok\\377\\376 end\\n"))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed);
    assert_eq!(texts(&entries, Stream::Stdout), ["ok\u{fffd}\u{fffd} end"]);
}

#[test]
fn a_10_mb_line_is_cut_at_the_max_line_size_and_nothing_is_lost() {
    let engine = engine();
    let run = engine
        .submit(sh("head -c 10000000 /dev/zero | tr '\\0' x"))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed);
    let out: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stdout)
        .collect();
    assert_eq!(
        out.iter().map(|e| e.message.len()).sum::<usize>(),
        10_000_000
    );
    assert!(out
        .iter()
        .all(|e| e.message.len() <= 64 * 1024 && e.end == LineEnd::None));
    assert!(out.len() >= 10_000_000 / (64 * 1024));
}

#[test]
fn empty_lines_are_entries() {
    let engine = engine();
    let run = engine
        .submit(RunSpec::new("printf").arg("a\\n\\n\\nb\\n"))
        .unwrap();
    let (entries, _) = collect(&run);
    assert_eq!(texts(&entries, Stream::Stdout), ["a", "", "", "b"]);
}

#[test]
fn a_million_lines_arrive_exactly_once_in_order_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig {
        log_dir: Some(dir.path().to_path_buf()),
        ..EngineConfig::default()
    });
    let run = engine
        .submit(sh("seq 1 500000 & seq 1 500000 >&2; wait"))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed);
    let lines: Vec<_> = entries
        .iter()
        .filter(|e| e.stream != Stream::System)
        .collect();
    assert_eq!(lines.len(), 1_000_000);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        let got = texts(&entries, stream);
        assert_eq!(got.len(), 500_000);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, m)| *m == (i + 1).to_string()),
            "{stream:?} out of order"
        );
    }
}

#[test]
fn the_ring_is_bounded_and_a_late_subscriber_gets_a_gap_without_a_log() {
    let engine = Engine::new(EngineConfig {
        ring_max_entries: 1000,
        ..EngineConfig::default()
    });
    let run = engine
        .submit(RunSpec::new("seq").args(["1", "100000"]))
        .unwrap();
    run.wait();
    let stats = run.capture().stats();
    assert!(stats.retained_entries <= 1000);
    assert_eq!(stats.entries, 100_001, "100 000 lines and one system entry");
    let mut sub = run.subscribe(From::Start);
    let mut first = None;
    let mut seqs = Vec::new();
    loop {
        match sub.next(PATIENCE) {
            Next::Gap { from_seq, to_seq } => {
                assert!(seqs.is_empty());
                first = Some((from_seq, to_seq));
            }
            Next::Entries(batch) => seqs.extend(batch.iter().map(|e| e.seq)),
            Next::End(_) => break,
            Next::Status(_) | Next::Gpu { .. } => {}
            Next::Timeout => panic!("timeout"),
        }
    }
    let (from_seq, to_seq) = first.expect("a gap comes first");
    assert_eq!(from_seq, 0);
    assert_eq!(seqs.first(), Some(&(to_seq + 1)));
    assert_eq!(seqs.len(), 1000);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(run.capture().stats().dropped, to_seq + 1);
}

#[test]
fn a_log_that_reaches_its_limit_ends_with_a_warning_and_the_ring_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig {
        ring_max_entries: 1000,
        log_dir: Some(dir.path().to_path_buf()),
        max_log_bytes: Some(200_000),
        ..EngineConfig::default()
    });
    // Lines come in batches of at most 1 MiB, and the limit is checked after each: a
    // burst of 2 MiB of lines makes sure the limit is passed within the run.
    let run = engine
        .submit(sh(
            "yes 0123456789012345678901234567890123456789 | head -n 50000",
        ))
        .unwrap();
    let status = run.wait();
    assert_eq!(status.status, RunState::Completed);
    let log = dir.path().join(format!("{}.jsonl", run.id()));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        (200_000..200_000 + (1 << 20) + 1000).contains(&size),
        "{size}"
    );
    let last_logged = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(
        last_logged.contains("reached its limit of 200000 bytes"),
        "{last_logged}"
    );

    // From the start: what the log holds, a gap, then the ring (kept after the end, since
    // the log does not hold it).
    let mut logged = 0;
    let mut gap = None;
    let mut tail = Vec::new();
    for event in run.subscribe(From::Start) {
        match event {
            Event::Entry(e) if gap.is_none() => {
                assert_eq!(e.seq, logged);
                logged += 1;
            }
            Event::Entry(e) => tail.push(e),
            Event::Gap { from_seq, to_seq } => gap = Some((from_seq, to_seq)),
            _ => {}
        }
    }
    let (from, to) = gap.expect("a gap between the log and the ring");
    assert_eq!(
        from, logged,
        "everything in the log came first, the warning last"
    );
    assert_eq!(tail.len(), 1000);
    assert_eq!(tail[0].seq, to + 1);
    assert_eq!(tail.last().unwrap().message, "exited with code 0");
    assert_eq!(
        tail.last().unwrap().seq,
        50_001,
        "50 000 lines, the warning, the exit"
    );
    let on_disk = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
    assert_eq!(logged, on_disk);

    // Loaded again (a server restart): the log, then a gap for what only memory had.
    let again = Engine::new(EngineConfig::default());
    let status = run.status();
    assert_eq!(status.total_entries, Some(50_002));
    let reloaded = again.adopt_finished(status, &log).unwrap();
    let events: Vec<_> = reloaded.subscribe(From::Start).collect();
    let entries = events
        .iter()
        .filter(|e| matches!(e, Event::Entry(_)))
        .count() as u64;
    assert_eq!(entries, on_disk);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Gap { from_seq, to_seq: 50_001 } if *from_seq == on_disk)),
        "{:?}",
        &events[events.len() - 3..]
    );
}

#[test]
fn with_a_log_dir_a_late_subscriber_gets_every_entry_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_log(dir.path(), 1000);
    let run = engine
        .submit(RunSpec::new("seq").args(["1", "100000"]))
        .unwrap();
    run.wait();
    // Finished with a log: the ring is given back, everything is read from the file.
    assert_eq!(run.capture().stats().retained_entries, 0);
    let (entries, _) = collect(&run);
    assert_eq!(entries.len(), 100_001);
    let out = texts(&entries, Stream::Stdout);
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, m)| *m == (i + 1).to_string()));
    assert!(dir.path().join(format!("{}.jsonl", run.id())).exists());
    // Resume from the middle, and the tail, read back across the ring's edge.
    let mut sub = run.subscribe(From::AfterSeq(49_999));
    let first = loop {
        if let Next::Entries(b) = sub.next(PATIENCE) {
            break b[0].clone();
        }
    };
    assert_eq!((first.seq, first.message.as_str()), (50_000, "50001"));
    let tail: Vec<_> = run
        .subscribe(From::Tail(3))
        .filter_map(|e| match e {
            Event::Entry(e) => Some(e.seq),
            _ => None,
        })
        .collect();
    assert_eq!(tail, [99_998, 99_999, 100_000]);
}

#[test]
fn a_slow_subscriber_slows_neither_the_child_nor_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_log(dir.path(), 1000);
    let run = engine
        .submit(RunSpec::new("seq").args(["1", "200000"]))
        .unwrap();
    let stalled = run.subscribe(From::Start); // never read while the run goes on
    let reader = {
        let run = run.clone();
        thread::spawn(move || collect(&run).0.len())
    };
    let status = run
        .wait_timeout(PATIENCE * 4)
        .expect("the child finished while a subscriber stalled");
    assert_eq!(status.status, RunState::Completed);
    assert_eq!(reader.join().unwrap(), 200_001);
    // The stalled one still gets everything, from the log, when it finally reads.
    let count = stalled.filter(|e| matches!(e, Event::Entry(_))).count();
    assert_eq!(count, 200_001);
}

#[test]
fn cancel_terminates_the_whole_process_group() {
    let engine = engine();
    let run = engine
        .submit(sh("sleep 100 & sleep 100 & echo ready; wait"))
        .unwrap();
    wait_for_entry(&run, |e| e.message == "ready");
    let pgid = run.status().pid.unwrap();
    assert!(live_group_members(pgid).len() >= 3, "sh and two sleeps");
    assert!(run.cancel());
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Cancelled);
    assert!(!status.cancelling);
    assert!(live_group_members(pgid).is_empty(), "no sleep left alive");
    let system = texts(&entries, Stream::System);
    assert!(
        system
            .iter()
            .any(|m| m.contains("sent SIGTERM to process group")),
        "{system:?}"
    );
    // The sleeps got the same SIGTERM as sh: not "outlived the leader" a second time.
    assert_eq!(
        system.iter().filter(|m| m.contains("sent SIGTERM")).count(),
        1,
        "{system:?}"
    );
    assert!(!run.cancel(), "cancel of a finished run is a no-op");
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let engine = engine();
    let run = engine
        .submit(
            sh("trap '' TERM; echo ready; while :; do sleep 1; done")
                .grace(Duration::from_millis(300)),
        )
        .unwrap();
    wait_for_entry(&run, |e| e.message == "ready");
    let pgid = run.status().pid.unwrap();
    // Idempotent, from any thread.
    cancel_from_three_threads(&run);
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Cancelled);
    assert_eq!(status.signal, Some(9));
    let system = texts(&entries, Stream::System);
    assert_eq!(
        system.iter().filter(|m| m.contains("SIGTERM")).count(),
        1,
        "{system:?}"
    );
    assert!(
        system.iter().any(|m| m.starts_with("grace period ended")),
        "{system:?}"
    );
    assert!(live_group_members(pgid).is_empty());
}

#[test]
fn a_run_timeout_ends_timed_out_through_the_same_stop_path() {
    let engine = engine();
    let run = engine
        .submit(
            RunSpec::new("sleep")
                .arg("100")
                .timeout(Duration::from_millis(200)),
        )
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::TimedOut);
    assert_eq!(status.signal, Some(15));
    assert_eq!(status.exit_code, None);
    assert!(status
        .error_message
        .unwrap()
        .contains("timed out after 0.2 s"));
    let system = texts(&entries, Stream::System);
    assert!(
        system
            .iter()
            .any(|m| m.starts_with("timed out after 0.2 s: sent SIGTERM")),
        "{system:?}"
    );
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let engine = engine();
    let failed = engine.submit(sh("echo 'bad input' >&2; exit 3")).unwrap();
    let killed = engine.submit(sh("kill -9 $$")).unwrap();
    let status = failed.wait();
    assert_eq!(
        (status.status, status.exit_code, status.signal),
        (RunState::Failed, Some(3), None)
    );
    assert_eq!(status.error_message.as_deref(), Some("bad input"));
    let status = killed.wait();
    assert_eq!(
        (status.status, status.exit_code, status.signal),
        (RunState::Failed, None, Some(9))
    );
    assert!(status.error_message.unwrap().contains("SIGKILL"));
}

#[test]
fn the_run_completes_when_the_leader_exits_and_leftovers_are_terminated() {
    let engine = engine();
    let run = engine.submit(sh("sleep 100 & echo hi")).unwrap();
    let status = run
        .wait_timeout(PATIENCE)
        .expect("completes without waiting for the sleep");
    assert_eq!(status.status, RunState::Completed);
    let pgid = status.pid.unwrap();
    assert!(
        live_group_members(pgid).is_empty(),
        "the backgrounded sleep was terminated"
    );
    let (entries, _) = collect(&run);
    assert_eq!(texts(&entries, Stream::Stdout), ["hi"]);
    let system = texts(&entries, Stream::System);
    assert!(
        system.iter().any(|m| m.contains("outlived the leader")),
        "{system:?}"
    );
}

#[test]
fn a_cancel_while_leftovers_are_being_stopped_takes_effect_at_once() {
    let engine = engine();
    let run = engine
        .submit(
            sh("(trap '' TERM; exec sleep 100) >/dev/null 2>&1 & echo leader-done")
                .grace(Duration::from_secs(60)),
        )
        .unwrap();
    // The leader is gone; the leftover ignores SIGTERM and has 60 s of grace.
    wait_for_entry(&run, |e| e.message.contains("outlived the leader"));
    let pgid = run.status().pid.unwrap();
    let mut sub = run.subscribe(From::Tail(0));
    assert!(run.cancel(), "the run is not over while its group lives");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match sub.next(PATIENCE) {
            Next::Status(s) if s.cancelling => break,
            Next::End(s) => panic!("ended before it said cancelling: {s:?}"),
            _ => assert!(Instant::now() < deadline, "no cancelling status"),
        }
    }
    assert!(
        run.kill(),
        "SIGKILL instead of waiting out the grace period"
    );
    let status = run.wait_timeout(PATIENCE).expect("finished after SIGKILL");
    assert_eq!(status.status, RunState::Cancelled, "{status:?}");
    assert_eq!(status.exit_code, Some(0), "the leader's own exit");
    assert!(live_group_members(pgid).is_empty());
}

#[test]
fn a_setsid_escapee_holding_the_pipe_does_not_hang_the_run() {
    // Process groups only: a cgroup would stop the escapee with the rest of the run
    // (tests/containment.rs checks that).
    let engine = Engine::new(EngineConfig {
        cgroups: false,
        ..EngineConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 100' & \
         while [ ! -e {0} ]; do sleep 0.01; done; echo started",
        pidfile.display()
    );
    let run = engine.submit(sh(&script)).unwrap();
    let status = run
        .wait_timeout(PATIENCE)
        .expect("finished within the leak timeout");
    let escapee: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(status.status, RunState::Completed);
    let (entries, _) = collect(&run);
    let system = texts(&entries, Stream::System);
    assert!(
        system.iter().any(|m| m.contains("still held open")),
        "{system:?}"
    );
    // The escapee left the group, so the engine does not (and must not) touch it.
    assert!(is_alive(escapee));
    unsafe { libc::kill(escapee as i32, libc::SIGKILL) };
}

#[test]
fn spawn_failures_end_failed_with_a_clear_message() {
    let engine = engine();
    let missing = engine.submit(RunSpec::new("no-such-program-xyz")).unwrap();
    let status = missing.wait();
    assert_eq!(status.status, RunState::Failed);
    assert_eq!(
        status.error_message.as_deref(),
        Some("program not found: no-such-program-xyz")
    );
    let bad_cwd = engine
        .submit(RunSpec::new("true").cwd("/no/such/dir"))
        .unwrap();
    let status = bad_cwd.wait();
    assert_eq!(status.status, RunState::Failed);
    assert!(status
        .error_message
        .unwrap()
        .contains("working directory /no/such/dir does not exist"));
    assert!(
        engine.submit(RunSpec::new("")).is_err(),
        "an empty program is refused at submit"
    );
}

#[test]
fn max_concurrent_caps_live_runs_and_keeps_fifo_order() {
    let engine = Engine::new(EngineConfig {
        max_concurrent: 2,
        ..EngineConfig::default()
    });
    let runs: Vec<_> = (0..5)
        .map(|_| engine.submit(sh("sleep 0.2")).unwrap())
        .collect();
    let statuses: Vec<_> = runs.iter().map(|r| r.wait()).collect();
    for s in &statuses {
        assert_eq!(s.status, RunState::Completed);
    }
    let intervals: Vec<_> = statuses
        .iter()
        .map(|s| (s.started_at.unwrap(), s.completed_at.unwrap()))
        .collect();
    for (start, _) in &intervals {
        let live = intervals
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        assert!(live <= 2, "{live} runs live at once: {intervals:?}");
    }
}

#[test]
fn queued_runs_start_in_submission_order() {
    let engine = Engine::new(EngineConfig {
        max_concurrent: 1,
        ..EngineConfig::default()
    });
    let blocker = engine.submit(RunSpec::new("sleep").arg("100")).unwrap();
    wait_running(&blocker);
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    let runs: Vec<_> = (0..4)
        .map(|i| {
            engine
                .submit(sh(&format!("echo {i} >> {}", order.display())))
                .unwrap()
        })
        .collect();
    assert!(runs
        .iter()
        .all(|r| r.status().waiting_for.as_deref() == Some("slot")));
    blocker.cancel();
    runs.iter()
        .for_each(|r| assert_eq!(r.wait().status, RunState::Completed));
    assert_eq!(std::fs::read_to_string(order).unwrap(), "0\n1\n2\n3\n");
}

#[test]
fn subscribers_see_each_status_change() {
    let engine = engine();
    let run = engine.submit(sh("echo one")).unwrap();
    let states: Vec<_> = run
        .subscribe(From::Start)
        .filter_map(|e| match e {
            Event::Status(s) => Some(s.status),
            Event::End(s) => Some(s.status),
            _ => None,
        })
        .collect();
    // The subscription may start after `queued` is over; it always sees the rest.
    assert!(
        states.ends_with(&[RunState::Running, RunState::Completed, RunState::Completed]),
        "{states:?}"
    );
}

#[test]
fn shutdown_terminates_everything_and_subscribers_get_their_final_status() {
    let engine = engine();
    let runs: Vec<_> = [
        sh("sleep 100 & echo ready; wait"),
        sh("trap '' TERM; echo ready; while :; do sleep 1; done").grace(Duration::from_millis(200)),
    ]
    .into_iter()
    .map(|spec| engine.submit(spec).unwrap())
    .collect();
    let followers: Vec<_> = runs
        .iter()
        .map(|run| {
            wait_for_entry(run, |e| e.message == "ready");
            let sub = run.subscribe(From::Start);
            thread::spawn(move || sub.last())
        })
        .collect();
    let pgids: Vec<_> = runs.iter().map(|r| r.status().pid.unwrap()).collect();
    assert!(engine.shutdown(PATIENCE));
    for f in followers {
        match f.join().unwrap() {
            Some(Event::End(s)) => assert_eq!(s.status, RunState::Cancelled),
            other => panic!("expected End, got {other:?}"),
        }
    }
    for pgid in pgids {
        assert!(live_group_members(pgid).is_empty());
    }
    assert!(matches!(
        engine.submit(RunSpec::new("true")),
        Err(runstream::SubmitError::ShuttingDown)
    ));
}

#[test]
fn dropping_the_engine_leaves_no_child_running() {
    let engine = engine();
    let run = engine.submit(sh("sleep 100 & echo ready; wait")).unwrap();
    wait_for_entry(&run, |e| e.message == "ready");
    let pgid = run.status().pid.unwrap();
    drop(engine);
    assert!(live_group_members(pgid).is_empty());
    assert_eq!(run.status().status, RunState::Cancelled);
    let _ = Arc::strong_count(run.capture());
}

#[test]
fn random_binary_output_is_captured_and_the_run_completes() {
    // Every byte value, in every position: U+FFFD next to digits, `%`, `\r`, long lines.
    let engine = engine();
    let run = engine.submit(sh("head -c 3000000 /dev/urandom")).unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(
        (status.status, status.exit_code),
        (RunState::Completed, Some(0))
    );
    let out: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stdout)
        .collect();
    assert!(out.len() > 1000, "{} entries", out.len());
    assert!(out.iter().all(|e| e.message.len() <= 3 * 64 * 1024));
    let parsed: serde_json::Value = serde_json::from_str(out[0].json()).unwrap();
    assert_eq!(parsed["message"].as_str(), Some(out[0].message.as_str()));
}

#[test]
fn a_line_that_keeps_growing_is_still_shown_while_it_grows() {
    // A dot every 20 ms, never a newline, never quiet for 100 ms: it must not wait for EOF.
    let engine = engine();
    let run = engine
        .submit(sh("while :; do printf .; sleep 0.02; done"))
        .unwrap();
    let entry = wait_for_entry(&run, |e| e.stream == Stream::Stdout);
    assert!(
        entry.message.chars().all(|c| c == '.'),
        "{:?}",
        entry.message
    );
    assert_eq!(entry.end, LineEnd::None);
    assert_eq!(run.status().status, RunState::Running);
    run.cancel();
    run.wait();
}

#[test]
fn an_unusable_log_dir_is_said_in_the_run_and_a_zero_timeout_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let engine = Engine::new(EngineConfig {
        log_dir: Some(file.join("runs")), // under a regular file: cannot be created
        ..EngineConfig::default()
    });
    let run = engine
        .submit(sh("sleep 0.2; echo done").timeout(Duration::ZERO))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed, "zero is no timeout");
    assert_eq!(texts(&entries, Stream::Stdout), ["done"]);
    let system = texts(&entries, Stream::System);
    assert!(
        system[0].starts_with("cannot create the run's log"),
        "{system:?}"
    );
}
