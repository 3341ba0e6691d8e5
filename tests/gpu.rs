//! GPU awareness with a fake source: pid → run mapping through process groups, peaks,
//! `gpu` events, and the GPU-memory admission queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runstream::gpu::{GpuDevice, GpuError, GpuProcess, GpuSource, NoGpu};
use runstream::{Engine, EngineConfig, Event, From, RunHandle, RunSpec, RunState};

use crate::util::*;

const GIB: u64 = 1 << 30;

/// One fake card whose free memory and processes the test sets.
#[derive(Debug, Default)]
struct FakeGpu {
    device: Mutex<GpuDevice>,
}

impl FakeGpu {
    fn new(free: u64) -> Arc<FakeGpu> {
        Arc::new(FakeGpu {
            device: Mutex::new(GpuDevice {
                name: "Fake RTX 5090".into(),
                uuid: "GPU-fake".into(),
                memory_total_bytes: 32 * GIB,
                memory_free_bytes: free,
                memory_used_bytes: 32 * GIB - free,
                ..GpuDevice::default()
            }),
        })
    }

    fn set(&self, free: u64, processes: &[(u32, u64)]) {
        let mut d = self.device.lock().unwrap();
        d.memory_free_bytes = free;
        d.memory_used_bytes = d.memory_total_bytes - free;
        d.processes = processes
            .iter()
            .map(|&(pid, bytes)| GpuProcess {
                pid,
                used_memory_bytes: Some(bytes),
                ..GpuProcess::default()
            })
            .collect();
    }
}

impl GpuSource for FakeGpu {
    fn sample(&self) -> Result<Vec<GpuDevice>, GpuError> {
        Ok(vec![self.device.lock().unwrap().clone()])
    }
}

fn engine_with(source: Arc<dyn GpuSource>, max_concurrent: usize) -> Engine {
    Engine::new(EngineConfig {
        gpu_source: Some(source),
        gpu_sample_interval: Duration::from_millis(20),
        max_concurrent,
        ..EngineConfig::default()
    })
}

fn wait_status(run: &RunHandle, what: &str, cond: impl Fn(&runstream::RunStatus) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond(&run.status()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            run.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn gpu_memory_of_a_grandchild_is_the_runs_with_its_peak_and_gpu_events() {
    let gpu = FakeGpu::new(30 * GIB);
    let engine = engine_with(gpu.clone(), 4);
    // The leader is `sh`; the process "on the GPU" is its child `sleep`, as `python` under
    // `sh -c` would be.
    let run = engine.submit(sh("sleep 100 & echo $!; wait")).unwrap();
    let grandchild: u32 = wait_for_entry(&run, |_| true).message.parse().unwrap();
    let mut sub = run.subscribe(From::Tail(0));
    let mut next_gpu_event = move || loop {
        match sub.next(PATIENCE) {
            runstream::Next::Gpu {
                memory_bytes,
                peak_bytes,
                ..
            } => return (memory_bytes, peak_bytes),
            runstream::Next::Timeout | runstream::Next::End(_) => panic!("no gpu event"),
            _ => {}
        }
    };
    gpu.set(28 * GIB, &[(grandchild, 2 * GIB)]);
    wait_status(&run, "2 GiB attributed", |s| {
        s.gpu_memory_bytes == Some(2 * GIB)
    });
    assert_eq!(next_gpu_event(), (Some(2 * GIB), Some(2 * GIB)));
    gpu.set(29 * GIB, &[(grandchild, GIB)]);
    wait_status(&run, "1 GiB now", |s| s.gpu_memory_bytes == Some(GIB));
    assert_eq!(
        next_gpu_event(),
        (Some(GIB), Some(2 * GIB)),
        "current drops, the peak stays"
    );
    assert_eq!(run.status().gpu_memory_peak_bytes, Some(2 * GIB));
    let usage = engine.gpu().runs();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].run_id.as_str(), usage[0].gpu_memory_bytes),
        (run.id(), Some(GIB))
    );
    run.cancel();
    run.wait();
    assert!(
        engine.gpu().runs().is_empty(),
        "a finished run is no longer tracked"
    );
}

#[test]
fn a_gpu_run_waits_for_memory_without_holding_back_other_runs() {
    let gpu = FakeGpu::new(3 * GIB);
    let engine = engine_with(gpu.clone(), 8);
    let big = engine
        .submit(RunSpec::new("sleep").arg("100").gpu_memory_mb(4096))
        .unwrap();
    let status = big.status();
    assert_eq!(
        (status.status, status.waiting_for.as_deref()),
        (RunState::Queued, Some("gpu_memory"))
    );
    // No GPU needed: starts at once, not behind the GPU run.
    let cpu = engine.submit(sh("echo cpu")).unwrap();
    assert_eq!(cpu.wait().status, RunState::Completed);
    // FIFO among GPU runs: 1 GiB would fit, but it waits behind the 4 GiB run.
    let small = engine
        .submit(RunSpec::new("sleep").arg("100").gpu_memory_mb(1024))
        .unwrap();
    assert_eq!(small.status().status, RunState::Queued);
    assert_eq!(big.status().status, RunState::Queued);
    gpu.set(8 * GIB, &[]);
    wait_running(&big);
    // 8 GiB free, 4 promised to `big` (the driver does not show its process yet): 4 left.
    wait_running(&small);
    for run in [&big, &small] {
        run.cancel();
        assert_eq!(run.wait().status, RunState::Cancelled);
    }
}

/// `gpu_memory_mb` of 2^44 (16 EiB) or more wrapped to 0 bytes when turned into bytes,
/// so an absurd request started at once as if it needed no GPU.
#[test]
fn a_huge_gpu_memory_request_waits_instead_of_wrapping_to_nothing() {
    let gpu = FakeGpu::new(32 * GIB);
    let engine = engine_with(gpu, 8);
    for mb in [1 << 44, u64::MAX] {
        let run = engine
            .submit(RunSpec::new("sleep").arg("100").gpu_memory_mb(mb))
            .unwrap();
        let status = run.status();
        assert_eq!(
            (status.status, status.waiting_for.as_deref(), status.pid),
            (RunState::Queued, Some("gpu_memory"), None),
            "{mb} MiB"
        );
        run.cancel();
        assert_eq!(run.wait().status, RunState::Cancelled);
    }
}

#[test]
fn promised_memory_counts_as_taken_until_the_driver_sees_it() {
    let gpu = FakeGpu::new(5 * GIB);
    let engine = engine_with(gpu.clone(), 8);
    let first = engine
        .submit(sh("sleep 100 & echo $!; wait").gpu_memory_mb(4096))
        .unwrap();
    let pid: u32 = wait_for_entry(&first, |_| true).message.parse().unwrap();
    let second = engine
        .submit(RunSpec::new("sleep").arg("100").gpu_memory_mb(4096))
        .unwrap();
    // NVML still says 5 GiB free, but 4 are promised to `first`.
    std::thread::sleep(Duration::from_millis(200)); // several sample periods
    assert_eq!(second.status().status, RunState::Queued);
    // The driver now shows `first` using its 4 GiB: 1 GiB free, still not enough.
    gpu.set(GIB, &[(pid, 4 * GIB)]);
    wait_status(&first, "first's memory seen", |s| {
        s.gpu_memory_bytes == Some(4 * GIB)
    });
    assert_eq!(second.status().status, RunState::Queued);
    // `first` ends and frees its memory: `second` starts.
    first.cancel();
    first.wait();
    gpu.set(5 * GIB, &[]);
    wait_running(&second);
    second.cancel();
    second.wait();
}

#[test]
fn without_a_gpu_a_gpu_run_fails_clearly_and_nothing_else_breaks() {
    let engine = engine_with(Arc::new(NoGpu("NVML library not found".into())), 4);
    let gpu_run = engine
        .submit(RunSpec::new("true").gpu_memory_mb(1024))
        .unwrap();
    let status = gpu_run.wait();
    assert_eq!(status.status, RunState::Failed);
    assert_eq!(status.pid, None, "never spawned");
    let msg = status.error_message.unwrap();
    assert!(
        msg.contains("needs 1024 MiB of GPU memory") && msg.contains("NVML library not found"),
        "{msg}"
    );
    let plain = engine.submit(sh("echo fine")).unwrap();
    let events: Vec<_> = plain.subscribe(From::Start).collect();
    assert!(matches!(events.last(), Some(Event::End(s)) if s.status == RunState::Completed));
    let report = engine.gpu().report();
    assert_eq!(report["available"], false);
    assert_eq!(report["reason"], "NVML library not found");
}
