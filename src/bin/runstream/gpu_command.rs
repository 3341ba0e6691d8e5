//! `runstream gpu`: the GPUs once, like a minimal `nvidia-smi`.

use runstream::gpu::default_source;

const MIB: f64 = 1024.0 * 1024.0;

/// Prints every device; exit status 1 when no GPU can be read (with the reason).
pub fn run() -> i32 {
    let devices = match default_source().sample() {
        Ok(devices) => devices,
        Err(reason) => {
            eprintln!("runstream: no GPU: {reason}");
            return 1;
        }
    };
    if devices.is_empty() {
        println!("no GPU found");
        return 1;
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "{:<3} {:<28} {:>19} {:>5} {:>6} {:>8}",
        "GPU", "NAME", "MEMORY USED/TOTAL", "UTIL", "TEMP", "POWER"
    );
    for d in &devices {
        println!(
            "{:<3} {:<28} {:>8.0} / {:>6.0} MiB {:>5} {:>6} {:>8}",
            d.index,
            d.name,
            d.memory_used_bytes as f64 / MIB,
            d.memory_total_bytes as f64 / MIB,
            opt(d.utilization_gpu_percent.map(|u| format!("{u}%"))),
            opt(d.temperature_celsius.map(|t| format!("{t}C"))),
            opt(d.power_watts.map(|w| format!("{w:.0}W"))),
        );
    }
    let processes: Vec<_> = devices
        .iter()
        .flat_map(|d| d.processes.iter().map(move |p| (d.index, p)))
        .collect();
    if !processes.is_empty() {
        println!("\n{:<3} {:>8} {:>12} {:>4}", "GPU", "PID", "MEMORY", "SM");
        for (gpu, p) in processes {
            let mem = opt(p
                .used_memory_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / MIB)));
            let sm = opt(p.sm_utilization_percent.map(|u| format!("{u}%")));
            println!("{gpu:<3} {:>8} {:>12} {sm:>4}", p.pid, mem);
        }
    }
    for d in &devices {
        if let Some(why) = &d.processes_error {
            println!("GPU {}: processes cannot be listed: {why}", d.index);
        }
    }
    0
}
