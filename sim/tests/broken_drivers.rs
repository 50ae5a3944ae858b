//! The broken-driver gallery: the production driver, broken on purpose in
//! one way at a time by its test-only fault switch
//! (`driver/src/fault_switch.rs`), must fail the scenario suite, and be
//! caught by the invariant that exists for that kind of bug. A breakage
//! that gets through every scenario means an invariant has a gap.
//!
//! Each test runs the suite on each scenario's first seed, starting with
//! the scenario that should catch it first and going on through the others
//! in name order until the named invariant reports it.

use std::path::PathBuf;

use elide_driver::fault_switch::{self, Breakage};
use elide_sim::{run_scenario, Scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Runs the suite with `breakage` switched on until `rule` is broken;
/// panics if the whole suite passes it by.
fn caught_by(breakage: Breakage, first: &str, rule: &str) {
    let mut files = scenario_files();
    let at = files
        .iter()
        .position(|f| f.file_stem().is_some_and(|s| s == first))
        .unwrap_or_else(|| panic!("no scenario {first}"));
    let first = files.remove(at);
    files.insert(0, first);
    fault_switch::set(Some(breakage));
    let mut other_failures = Vec::new();
    for file in &files {
        let scenario = Scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
        let seed = scenario.seeds[0];
        let report = run_scenario(&scenario, seed);
        if let Some(v) = report.violations.iter().find(|v| v.rule == rule) {
            fault_switch::set(None);
            eprintln!(
                "{breakage:?}: caught by [{rule}] in {} seed {seed}: {v}",
                scenario.name
            );
            return;
        }
        if !report.passed() {
            other_failures.push(format!(
                "{} seed {seed}: {}",
                scenario.name, report.violations[0]
            ));
        }
    }
    fault_switch::set(None);
    panic!(
        "{breakage:?} got past [{rule}] in every scenario ({} of {} failed on other rules: {other_failures:?})",
        other_failures.len(),
        files.len()
    );
}

#[test]
fn reporting_everything_lost_breaks_real_outcome() {
    caught_by(
        Breakage::ReportsEverythingLost,
        "daemon-crash",
        "real-outcome",
    );
}

#[test]
fn giving_up_during_partitions_breaks_result_after_end() {
    caught_by(
        Breakage::GivesUpDuringPartitions,
        "partition-during-run",
        "result-after-end",
    );
}

#[test]
fn ignoring_kill_signal_breaks_kill_signal() {
    caught_by(
        Breakage::IgnoresKillSignal,
        "partition-during-stop",
        "kill-signal",
    );
}

#[test]
fn over_claiming_dropped_output_breaks_lost_output() {
    caught_by(
        Breakage::OverClaimsDroppedOutput,
        "output-retention",
        "lost-output",
    );
}

#[test]
fn answering_wait_task_twice_breaks_one_result() {
    caught_by(
        Breakage::AnswersWaitTaskTwice,
        "agent-crash-after-result",
        "one-result",
    );
}

#[test]
fn forgetting_a_stop_before_recovery_breaks_stop_bound() {
    caught_by(
        Breakage::ForgetsStopBeforeRecovery,
        "stop-before-recovery",
        "stop-bound",
    );
}

#[test]
fn reporting_a_timeout_as_a_clean_exit_breaks_timeout() {
    caught_by(Breakage::ReportsTimeoutAsCleanExit, "timeouts", "timeout");
}

#[test]
fn never_setting_oom_killed_breaks_oom() {
    caught_by(Breakage::NeverSetsOomKilled, "memory-limits", "oom");
}

#[test]
fn dropping_output_while_the_reader_stalls_breaks_output() {
    caught_by(Breakage::DropsOutputWhileStalled, "log-readers", "output");
}

#[test]
fn reporting_another_tasks_stats_breaks_stats_figures() {
    caught_by(
        Breakage::ReportsAnotherTasksStats,
        "task-stats",
        "stats-figures",
    );
}

#[test]
fn keeping_the_stats_stream_open_breaks_stats_end() {
    caught_by(Breakage::KeepsStatsStreamOpen, "task-stats", "stats-end");
}

#[test]
fn retrying_a_slow_signal_breaks_signal_once() {
    caught_by(
        Breakage::RetriesSlowSignal,
        "signal-under-partition",
        "signal-once",
    );
}

/// Every breakage has its test above.
#[test]
fn every_breakage_is_in_the_gallery() {
    let source = include_str!("broken_drivers.rs");
    for breakage in Breakage::ALL {
        assert!(
            source.contains(&format!("Breakage::{breakage:?},")),
            "{breakage:?} has no gallery test"
        );
    }
}
