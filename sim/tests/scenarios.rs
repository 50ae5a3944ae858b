//! Every scenario in `scenarios/`, on its own seeds, under `cargo test`;
//! and the proof that a run is a function of its seed.

use std::path::PathBuf;

use elide_sim::scenario::Scenario;
use elide_sim::world;

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
        let report = world::run(&scenario, seed);
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
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let scenario = load("random-faults");
    let first = world::run(&scenario, 7);
    let again = world::run(&scenario, 7);
    assert_eq!(first.trace.lines(), again.trace.lines());
    assert_eq!(first.trace.hash(), again.trace.hash());
    let other = world::run(&scenario, 8);
    assert_ne!(first.trace.hash(), other.trace.hash());
}
