//! `sim_completion`: completion latency (a program's exit to Nomad's
//! `WaitTask` result) in simulated time, with 1, 100 and 1,000 tasks
//! running at once on one client, for the driver's pushed watch and for
//! polling at the original design's 1 s interval. The real driver and
//! daemon run in the deterministic simulation (`sim/`), so the figure
//! measures the protocol (pushes, polls, network latency of 1–5 ms per
//! message), not this machine's load.
//!
//! Under `cargo bench` (argument `--bench`) it runs every size and writes
//! `target/elide-bench/sim_completion.json`; under `cargo test --benches`
//! it runs small sizes as a smoke test.

use std::time::Duration;

use elide_sim::{Latency, Scenario};

fn scenario(tasks: usize, mode: &str) -> Scenario {
    let text = format!(
        r#"
about = "{tasks} concurrent tasks, status_mode {mode}"
[cluster]
clients = 1
status_mode = "{mode}"
poll_interval = "1s"
[[tasks]]
name = "job"
count = {tasks}
spread = "1s"
program = """
print started {{i}}
sleep 5s
exit 0
"""
"#
    );
    Scenario::parse("sim_completion", &text).expect("valid scenario")
}

fn measure(tasks: usize, mode: &str) -> Latency {
    let report = elide_sim::run_scenario(&scenario(tasks, mode), 1);
    assert!(
        report.passed(),
        "{tasks} tasks in {mode} mode broke invariants: {:?}",
        report.violations
    );
    assert_eq!(report.summary.latency.samples.len(), tasks);
    report.summary.latency
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full { &[1, 100, 1000] } else { &[1, 10] };
    println!("sim_completion: program exit -> WaitTask result, simulated time");
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "tasks", "watch p50", "watch p99", "poll p50", "poll p99", "ratio"
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let watch = measure(n, "watch");
        let poll = measure(n, "poll");
        let (w50, w99) = (watch.quantile(0.5), watch.quantile(0.99));
        let (p50, p99) = (poll.quantile(0.5), poll.quantile(0.99));
        let ratio = ms(p50) / ms(w50).max(0.001);
        println!(
            "{n:>6} {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>10.1}ms {ratio:>7.0}x",
            ms(w50),
            ms(w99),
            ms(p50),
            ms(p99)
        );
        rows.push(format!(
            "{{\"tasks\":{n},\"watch_p50_ms\":{:.3},\"watch_p99_ms\":{:.3},\"poll_p50_ms\":{:.3},\"poll_p99_ms\":{:.3}}}",
            ms(w50),
            ms(w99),
            ms(p50),
            ms(p99)
        ));
        if !full {
            // What the benchmark exists to show: pushing beats polling.
            assert!(w50 < p50, "watch p50 {w50:?} is not below poll p50 {p50:?}");
        }
    }
    if full {
        elide_benches::write_counted(&elide_e2e::binaries::profile_dir(), "sim_completion", &rows);
    }
}
