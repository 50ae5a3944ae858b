//! Every scenario in `scenarios/`, on its own seeds, under `cargo test`;
//! and the proof that a run is a function of its seed.

use std::path::PathBuf;

use elide_sim::Scenario;

fn load(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a scenario on each of its seeds; fails with the violations, the
/// end of the trace and the command that replays the run.
fn run_scenario(name: &str) {
    let scenario = load(name);
    assert!(!scenario.seeds.is_empty(), "{name} lists no seeds");
    for &seed in &scenario.seeds {
        let report = elide_sim::run_scenario(&scenario, seed);
        if !report.passed() {
            let lines = report.trace.lines();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            let violations: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
            panic!(
                "{name} seed {seed} broke {} invariant(s):\n{}\n\nend of the trace:\n{tail}\n\nreplay: cargo run -p elide-sim --bin elide-sim -- run scenarios/{name}.toml --seed {seed}",
                violations.len(),
                violations.join("\n"),
            );
        }
        assert!(report.tasks > 0);
    }
}

macro_rules! scenarios {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_scenario($file);
            }
        )*

        /// Every file in `scenarios/` has a test above.
        #[test]
        fn every_scenario_file_is_tested() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let path = e.path();
                    (path.extension()? == "toml")
                        .then(|| path.file_stem().unwrap().to_string_lossy().into_owned())
                })
                .collect();
            files.sort();
            let mut tested = vec![$($file.to_owned()),*];
            tested.sort();
            assert_eq!(files, tested);
        }
    };
}

scenarios! {
    smoke => "smoke",
    healthy_at_scale => "healthy-at-scale",
    partition_during_start => "partition-during-start",
    partition_during_run => "partition-during-run",
    partition_during_stop => "partition-during-stop",
    daemon_crash => "daemon-crash",
    plugin_crash => "plugin-crash",
    client_restart => "client-restart",
    log_flood => "log-flood",
    session_expiry => "session-expiry",
    no_watch_stream => "no-watch-stream",
    bad_configs => "bad-configs",
    random_faults => "random-faults",
    events_pruned => "events-pruned",
    daemon_wipe => "daemon-wipe",
    daemon_wipe_polling => "daemon-wipe-polling",
    recover_while_unreachable => "recover-while-unreachable",
    destroy => "destroy",
    stop_fallbacks => "stop-fallbacks",
    output_retention => "output-retention",
    agent_crash_after_result => "agent-crash-after-result",
    stop_before_recovery => "stop-before-recovery",
    daemon_down_long => "daemon-down-long",
    random_faults_wide => "random-faults-wide",
    timeouts => "timeouts",
    memory_limits => "memory-limits",
    log_readers => "log-readers",
    task_stats => "task-stats",
    signal_under_partition => "signal-under-partition",
    stats_signals_random => "stats-signals-random",
    large_snippets => "large-snippets",
    busy_daemon => "busy-daemon",
    stop_during_long_partition => "stop-during-long-partition",
    slow_recovery => "slow-recovery",
    memory_sampled => "memory-sampled",
    broken_streams => "broken-streams",
    daemon_wipe_strict => "daemon-wipe-strict",
    stop_flood => "stop-flood",
    failing_stops => "failing-stops",
    denied_stops => "denied-stops",
    lost_start_answers => "lost-start-answers",
    task_ids => "task-ids",
}

/// The full trace of one run, printed by the `elide-sim` binary in its own
/// process (one simulation per process, as turmoil's users recommend: two
/// runs in one process share thread-local and library state).
fn trace_of(scenario: &str, seed: u64) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{scenario}.toml"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_elide-sim"))
        .args(["run", file.to_str().unwrap(), "--seed", &seed.to_string()])
        .output()
        .expect("run elide-sim");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8 trace");
    // Everything but the wall-clock speed line.
    text.lines()
        .filter(|l| !l.contains("simulated s per wall s"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Panics unless two runs of `scenario` on `seed` print the same trace;
/// returns it.
fn same_trace_twice(scenario: &str, seed: u64) -> String {
    let first = trace_of(scenario, seed);
    let again = trace_of(scenario, seed);
    assert!(first.lines().count() > 50, "a real trace: {first}");
    if first != again {
        let at = first
            .lines()
            .zip(again.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{scenario}: same seed, different traces; first difference at line {at}:\n{:?}\n{:?}",
            first.lines().nth(at),
            again.lines().nth(at)
        );
    }
    first
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let first = same_trace_twice("random-faults", 7);
    assert_ne!(first, trace_of("random-faults", 8));
    // TaskStats samples (each one a trace line), SignalTask answers,
    // timeouts, OOM kills and log readers that stall or go away.
    for scenario in [
        "task-stats",
        "signal-under-partition",
        "timeouts",
        "memory-limits",
        "log-readers",
    ] {
        let first = same_trace_twice(scenario, 7);
        assert_ne!(first, trace_of(scenario, 8), "{scenario}");
    }
}
