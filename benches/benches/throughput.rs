//! `throughput`: short python snippets per second through the real plugin
//! and daemon, warm (forks of the python zygote) against cold (a fresh
//! `python3` per execution, `--python-warm=false`).
//!
//! Each round starts every task the way a Nomad client does (StartTask, one
//! after the other, as allocations arrive), then waits for each (WaitTask)
//! and destroys it; the rate is tasks per second of wall time from the first
//! StartTask to the last result, and every task must have exited 0 with its
//! own output in its log FIFO.
//!
//! Counted, not timed by criterion, so this is a plain program. Under
//! `cargo bench` (argument `--bench`) it runs 200 snippets per mode and
//! writes `target/elide-bench/throughput.json` for `bench-report`; under
//! `cargo test --benches` it runs 5 per mode as a smoke test.

use std::time::{Duration, Instant};

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};

const LIMIT: Duration = Duration::from_secs(300);

/// Runs `n` short python snippets through a daemon started with `flags`;
/// returns executions per second.
async fn snippets_per_second(n: usize, flags: &[&str]) -> f64 {
    let daemon = Daemon::start_with(flags).await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let allocs: Vec<Alloc> = (0..n).map(|i| Alloc::new(&format!("short{i}"))).collect();
    let tasks: Vec<_> = allocs
        .iter()
        .enumerate()
        .map(|(i, alloc)| {
            alloc.task_config(&TaskConfig::code(
                "python",
                &format!("import json\nprint(json.dumps({{'task': {i}}}))"),
            ))
        })
        .collect();
    let started = Instant::now();
    for task in &tasks {
        host.start(task.clone()).await.expect("StartTask");
    }
    for task in &tasks {
        let exit = host.wait(&task.id, LIMIT).await;
        let result = exit.result.expect("WaitTask result");
        assert_eq!(
            (result.exit_code, result.signal, exit.err.as_str()),
            (0, 0, ""),
            "{}: {result:?}",
            task.id
        );
    }
    let elapsed = started.elapsed();
    for (i, (alloc, task)) in allocs.iter().zip(&tasks).enumerate() {
        alloc
            .stdout
            .wait_for(&format!("{{\"task\": {i}}}\n"), LIMIT);
        host.destroy(&task.id).await;
    }
    n as f64 / elapsed.as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 200 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let warm = rt.block_on(snippets_per_second(n, &[]));
    let cold = rt.block_on(snippets_per_second(n, &["--python-warm=false"]));
    println!("throughput: {n} short python snippets through the plugin and daemon");
    println!(
        "  warm {warm:.1}/s, cold {cold:.1}/s: warm/cold = {:.1}",
        warm / cold.max(f64::MIN_POSITIVE)
    );
    if full {
        elide_benches::write_counted(
            &elide_e2e::binaries::profile_dir(),
            "throughput",
            &[format!(
                "{{\"snippets\":{n},\"warm_per_second\":{warm:.2},\"cold_per_second\":{cold:.2}}}"
            )],
        );
    }
}
