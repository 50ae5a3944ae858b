//! `density`: memory (RSS) of the daemon and of the driver beyond the
//! interpreters themselves, per running task, with 10, 100 and 500 sleeping
//! snippets running at once through the real plugin and daemon.
//!
//! Memory is counted, not timed, so this is a plain program rather than a
//! criterion timing loop. Under `cargo bench` (argument `--bench`) it runs
//! every size and writes `target/elide-bench/density.json`; under
//! `cargo test --benches` it runs one small size as a smoke test.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};

const LIMIT: Duration = Duration::from_secs(120);
const SNIPPET: &str = "import time\nprint('up', flush=True)\ntime.sleep(600)\n";

/// Resident memory of one process (not its children), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

struct Sample {
    tasks: usize,
    daemon_per_task: f64,
    driver_per_task: f64,
}

async fn measure(tasks: usize) -> Sample {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    // Warm both up with one task, so one-time allocations do not count.
    let warm = Alloc::new("warm");
    let warm_task = warm.task_config(&TaskConfig::code("python", "print('warm')"));
    host.start(warm_task.clone()).await.expect("StartTask");
    host.wait(&warm_task.id, LIMIT).await;
    host.destroy(&warm_task.id).await;
    let (daemon_before, driver_before) = (rss(daemon.pid()), rss(host.plugin.pid()));

    let mut running = Vec::new();
    for i in 0..tasks {
        let alloc = Alloc::new(&format!("sleeper{i}"));
        let task = alloc.task_config(&TaskConfig::code("python", SNIPPET));
        host.start(task.clone()).await.expect("StartTask");
        running.push((alloc, task));
    }
    for (alloc, _) in &running {
        alloc.stdout.wait_for("up\n", LIMIT);
    }
    // Let samplers and forwarders settle into their steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (daemon_after, driver_after) = (rss(daemon.pid()), rss(host.plugin.pid()));
    for (_, task) in &running {
        host.destroy(&task.id).await;
    }
    let per_task = |after: u64, before: u64| after.saturating_sub(before) as f64 / tasks as f64;
    Sample {
        tasks,
        daemon_per_task: per_task(daemon_after, daemon_before),
        driver_per_task: per_task(driver_after, driver_before),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full { &[10, 100, 500] } else { &[5] };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    println!("density: RSS beyond the interpreters, per running task");
    println!(
        "{:>6} {:>14} {:>14} {:>14}",
        "tasks", "daemon KiB", "driver KiB", "total KiB"
    );
    for &n in sizes {
        let s = rt.block_on(measure(n));
        let total = s.daemon_per_task + s.driver_per_task;
        println!(
            "{:>6} {:>14.1} {:>14.1} {:>14.1}",
            s.tasks,
            s.daemon_per_task / 1024.0,
            s.driver_per_task / 1024.0,
            total / 1024.0
        );
        rows.push(format!(
            "{{\"tasks\":{},\"daemon_bytes_per_task\":{:.0},\"driver_bytes_per_task\":{:.0}}}",
            s.tasks, s.daemon_per_task, s.driver_per_task
        ));
    }
    if full {
        elide_benches::write_counted(&elide_e2e::binaries::profile_dir(), "density", &rows);
    }
}
