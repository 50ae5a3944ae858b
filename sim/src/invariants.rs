//! What must hold after every run, whatever the faults:
//!
//! 1. every started task reaches exactly one persisted result, and any
//!    other answer the agent received (before a crash kept it from
//!    persisting it) is the same (`one-result`), unless every holder of
//!    the first lost it before the second: the daemon's disk was wiped
//!    and the plugin went down in between, and the second is an explicit
//!    failure;
//! 2. that result is the program's real outcome (from the ground truth),
//!    never a wrong success or a wrong exit code; or an explicit failure
//!    only where the truth shows the program could not finish by itself
//!    or its end was lost: it never ran, it was force-destroyed, it died
//!    with its daemon, or its daemon lost the record (`real-outcome`);
//!    and no result reaches Nomad before its program ended
//!    (`result-after-end`);
//! 3. no program runs twice, a refused task runs not at all, and every
//!    program that ran belongs to a planned task (`planned-runs`); a
//!    refusal says what was wrong (`rejections`), and no `StartTask`
//!    error blames reachability when no fault touched the client
//!    (`start-errors`, in [`crate::call_errors`]); each link the plugin
//!    makes dials its daemon again only after a fault on its client
//!    (`redials`, in [`crate::connections`]), and its daemon serves no
//!    storm of `CancelExecution` calls (`request-storm`) and no
//!    `WatchSession` it does not list (`capabilities`); a cancel or delete
//!    the daemon refused for good goes again only when Nomad asks again
//!    (`refused-for-good`, in [`crate::refusals`]); `InspectTask` after a
//!    result says what `WaitTask` said (`inspect`, in
//!    [`crate::inspections`]); once a client's tasks are all destroyed,
//!    the plugin keeps no state for them (`leftover-files`, in
//!    [`crate::leftovers`]);
//! 4. a task's log streams received exactly the program's output, minus
//!    the byte ranges the driver reported lost (a prefix when the program
//!    died with its daemon or the task failed explicitly); every writer
//!    was closed; and what the driver reported lost is no more than the
//!    daemon can have discarded: what lies further back than its retention
//!    from the end of what the program wrote (`lost-output`);
//! 5. a stopped task's program ends, and its result reaches Nomad, within
//!    its kill_timeout plus [`STOP_BOUND`], counted from the stop; or,
//!    when faults hit its client during the stop, from the end of the last
//!    of them, plus the driver's heartbeat timeout (the time it may take
//!    to find a stream dead), and, after a daemon that failed cancels,
//!    the background stop's longest back-off (after one that refused them
//!    for good, from Nomad's next `StopTask`); the result's count starts no earlier than
//!    the agent's recovery of the task, the program's does not wait for it
//!    (`stop-bound`); its program's first signal is the job's
//!    `kill_signal` (`kill-signal`);
//! 6. at the end no program runs on any daemon, and no daemon still holds
//!    the execution of a destroyed task (unless it refused its delete for
//!    good); an undisturbed `DestroyTask` answers after the daemon
//!    answered the delete (`destroy-waits`, in [`crate::held`]);
//! 7. a departed client's session expires;
//! 8. the run finishes (no wedge) and the plugin never surprised Nomad;
//!    the log lines operators search for say only what happened
//!    (`operator-log`, in [`crate::operator_log`]);
//!    the health Nomad is shown follows long daemon outages
//!    (`fingerprint`, in [`crate::fingerprints`]);
//! 9. where the scenario says so, results are prompt (`results_within`)
//!    and exits are the ones known in advance (`exit_code`, `signal`);
//! 10. timeouts and memory limits hold and are reported as documented
//!     (`timeout`, `oom`, `memory-limit`, in [`crate::task_limits`]);
//! 11. a log reader that stalls or goes away delays no result beyond the
//!     driver's flush limit, output it never took is reported exactly, and
//!     no writer spins (`log-stall-bound`, `lost-output`, `no-busy-write`,
//!     in [`crate::log_readers`]).
//! 10. `TaskStats` samples come at the interval, resume after faults,
//!     carry the task's own measured figures and end with the task
//!     (`stats-cadence`, `stats-resume`, `stats-figures`, `stats-end`, in
//!     [`crate::task_stats`]); each `SignalTask` is delivered at most once,
//!     one answered OK before its answer, only to its own task, with the
//!     result that follows and codes Nomad can act on (`signal-once`,
//!     `signal-target`, `signal-outcome`, `signal-codes`, in
//!     [`crate::signals`]).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::evidence::{exit_of, Evidence, Latency, EXIT_PERSIST_SLACK};
use crate::observe::TaskResult;
use crate::truth::ProgramRun;

/// Slack over `kill_timeout` for a stopped task's result to reach Nomad.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// The driver's stop signal when the job sets no `kill_signal`.
const DEFAULT_KILL_SIGNAL: &str = "SIGINT";

use crate::scenario::{signal_number, FaultKind};

pub use crate::evidence::Violation;

/// Counts for the report.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Results that were the program's own exit.
    pub clean: usize,
    /// Explicit failures.
    pub failed: usize,
    /// Refused tasks.
    pub rejected: usize,
    /// Completion latency of clean results.
    pub latency: Latency,
    /// Output bytes reported lost.
    pub lost_bytes: u64,
    /// The longest any result took, as the `prompt` rule measures it.
    pub slowest: Duration,
    /// `TaskStats` samples and their resumption after faults.
    pub stats: crate::task_stats::StatsTally,
    /// `SignalTask` calls and their fates.
    pub signals: crate::signals::SignalTally,
}

/// How long a result took to reach Nomad: from the program's end, or from
/// the end of the last fault on its client if that is later (a program
/// that died with its daemon counts from there).
fn result_delay(
    e: &Evidence<'_>,
    client: u32,
    group: &str,
    run: &ProgramRun,
    at: Duration,
) -> Duration {
    let since = run
        .ended_at
        .unwrap_or_default()
        .max(e.plan.last_fault_end(client, group, at));
    at.saturating_sub(since)
}

/// The counts and latencies of a run.
pub fn summarize(e: &Evidence<'_>) -> Summary {
    let mut summary = Summary::default();
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        if seen.rejected.is_some() {
            summary.rejected += 1;
        }
        summary.lost_bytes += seen
            .dropped
            .iter()
            .chain(&seen.unread)
            .map(|(_, from, to)| to.saturating_sub(*from))
            .sum::<u64>();
        if let Some(result) = seen.results.first() {
            if let Some(run) = e.truth.runs_of(&plan.execution_id).first() {
                summary.slowest =
                    summary
                        .slowest
                        .max(result_delay(e, plan.client, &plan.group, run, result.at));
            }
            if result.err.is_empty() {
                summary.clean += 1;
                let runs = e.truth.runs_of(&plan.execution_id);
                if let Some(ended) = runs.first().and_then(|r| r.ended_at) {
                    summary
                        .latency
                        .samples
                        .push(result.at.saturating_sub(ended));
                }
            } else {
                summary.failed += 1;
            }
        }
    }
    summary.latency.samples.sort();
    summary.stats = crate::task_stats::tally(e);
    summary.signals = crate::signals::tally(e);
    summary
}

/// Checks every invariant; returns the broken ones.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: Option<&str>, detail: String| {
        out.push(Violation::new(rule, task, detail))
    };
    if let Some(why) = &e.aborted {
        violation("finishes", None, format!("the run did not finish: {why}"));
    }
    let departed = e.plan.departed_clients();
    let done = e.seen.done_clients();
    for client in 1..=e.scenario.cluster.clients {
        if !departed.contains(&client) && !done.contains(&client) {
            violation(
                "finishes",
                None,
                format!("client {client}'s workload never finished"),
            );
        }
    }
    let agent = e.seen.seen("<agent>");
    for surprise in &agent.surprises {
        violation("protocol", None, surprise.clone());
    }

    for plan in &e.plan.tasks {
        let task = Some(plan.task_id.as_str());
        let seen = e.seen.seen(&plan.task_id);
        let runs = e.truth.runs_of(&plan.execution_id);
        let gone_for_good = departed.contains(&plan.client);
        for surprise in &seen.surprises {
            violation("protocol", task, surprise.clone());
        }
        if runs.len() > 1 {
            violation(
                "at-most-once",
                task,
                format!("the program ran {} times", runs.len()),
            );
        }
        if seen.rejected.is_some() {
            continue;
        }

        // 1. Exactly one persisted result; any other answer the same.
        let persisted: Vec<&TaskResult> = seen.results.iter().filter(|r| r.persisted).collect();
        let result = match (persisted.len(), seen.results.first()) {
            (1, _) => persisted[0],
            (0, None) | (0, Some(_)) if gone_for_good => continue,
            (0, None) => {
                violation("one-result", task, "no result was ever delivered".into());
                continue;
            }
            (0, Some(first)) => {
                violation(
                    "one-result",
                    task,
                    "a result was received but never persisted".into(),
                );
                first
            }
            (n, _) => {
                violation("one-result", task, format!("{n} results were persisted"));
                persisted[0]
            }
        };
        for other in &seen.results {
            if (other.exit_code, other.signal, other.err.is_empty())
                != (result.exit_code, result.signal, result.err.is_empty())
                && !answer_forgotten_by_all(e, plan.client, result, other)
            {
                violation(
                    "one-result",
                    task,
                    format!(
                        "WaitTask answered differently: the persisted answer was exit_code={} signal={} err={:?}, another exit_code={} signal={} err={:?}",
                        result.exit_code,
                        result.signal,
                        result.err,
                        other.exit_code,
                        other.signal,
                        other.err
                    ),
                );
                break;
            }
        }

        // 2. The real outcome, or an explicit failure.
        let run = runs.first();
        let destroyed_running = seen.force_destroyed_at.is_some_and(|at| at <= result.at);
        if let Some((code, signal)) = plan.expected_exit {
            if !result.err.is_empty() || (result.exit_code, result.signal) != (code, signal) {
                violation(
                    "expected-exit",
                    task,
                    format!(
                        "Nomad was told exit_code={} signal={} err={:?}; the scenario expects exit_code={code} signal={signal}",
                        result.exit_code, result.signal, result.err
                    ),
                );
            }
        }
        if result.err.is_empty() {
            let real = run.and_then(exit_of);
            if real != Some((result.exit_code, result.signal)) {
                violation(
                    "real-outcome",
                    task,
                    format!(
                        "Nomad was told exit_code={} signal={} but the program {}",
                        result.exit_code,
                        result.signal,
                        match (run, real) {
                            (None, _) => "never ran".to_owned(),
                            (Some(_), None) => "did not exit by itself".to_owned(),
                            (Some(_), Some((c, s))) =>
                                format!("ended with exit_code={c} signal={s}"),
                        }
                    ),
                );
            }
        } else if !e.scenario.expect.failures_allowed
            && !destroyed_running
            && !run.is_some_and(|run| crate::task_limits::ended_at_limit(e, plan, run))
        {
            violation(
                "real-outcome",
                task,
                format!("explicit failure where none was expected: {}", result.err),
            );
        } else if let Some(why) = unexcused_failure(e, plan, run, result, destroyed_running) {
            violation(
                "real-outcome",
                task,
                format!("explicit failure ({}) but {why}", result.err),
            );
        }
        for received in &seen.results {
            // A forced destroy ends the wait whether or not the program
            // could be killed yet (its clean-up is `cleanup`'s to judge).
            if seen.force_destroyed_at.is_some_and(|at| at <= received.at) {
                continue;
            }
            if let Some(why) = before_the_end(e, plan.client, run, received.at) {
                violation(
                    "result-after-end",
                    task,
                    format!("Nomad got a result at {:?} but {why}", received.at),
                );
            }
        }

        // 4. Output, byte for byte, minus what was reported lost.
        let logs = e.logs.get(&plan.client).cloned().unwrap_or_default();
        if !seen.dropped.is_empty() && !e.scenario.expect.truncation_allowed {
            violation("output", task, "the driver reported lost output".into());
        }
        // Output may end early when the program died with its daemon, or
        // the task ended without its program's exit.
        let may_be_cut = !result.err.is_empty() || destroyed_running;
        for (name, path, written) in [
            (
                "stdout",
                plan.stdout_path(),
                run.map(|r| r.stdout.clone()).unwrap_or_default(),
            ),
            (
                "stderr",
                plan.stderr_path(),
                run.map(|r| r.stderr.clone()).unwrap_or_default(),
            ),
        ] {
            let got = logs.stream(&path);
            let expected = without_ranges(
                &written,
                seen.dropped
                    .iter()
                    .chain(&seen.unread)
                    .filter(|(s, _, _)| s == name)
                    .map(|(_, from, to)| (*from, *to)),
            );
            let program_finished = run.is_some_and(|r| r.exit.is_some());
            let ok = if program_finished && !may_be_cut {
                got.bytes == expected
            } else {
                expected.starts_with(&got.bytes)
            };
            if !ok {
                violation(
                    "output",
                    task,
                    format!(
                        "{name}: logmon got {} bytes, the program wrote {} ({} reported lost){}",
                        got.bytes.len(),
                        written.len(),
                        written.len() - expected.len(),
                        first_difference(&got.bytes, &expected)
                    ),
                );
            }
            if seen.destroyed_at.is_some() && got.opens != got.closes {
                violation(
                    "output",
                    task,
                    format!(
                        "{name}: opened {} times, closed {} times",
                        got.opens, got.closes
                    ),
                );
            }
        }

        if let Some(run) = run {
            for name in ["stdout", "stderr"] {
                let written = if name == "stdout" {
                    &run.stdout
                } else {
                    &run.stderr
                };
                let discardable = (written.len() as u64).saturating_sub(run.retention);
                let claims: Vec<(u64, u64)> = seen
                    .dropped
                    .iter()
                    .filter(|(s, _, _)| s == name)
                    .map(|(_, from, to)| (*from, *to))
                    .collect();
                let claimed: u64 = claims.iter().map(|(f, t)| t.saturating_sub(*f)).sum();
                let beyond = claims.iter().find(|(f, t)| f >= t || *t > discardable);
                if beyond.is_some() || claimed > discardable {
                    violation(
                        "lost-output",
                        task,
                        format!(
                            "{name}: the driver reported {claimed} bytes lost ({claims:?}); the program wrote {} and the daemon keeps {}, so at most [0, {discardable}) can have been discarded",
                            written.len(),
                            run.retention
                        ),
                    );
                }
            }
        }

        // 9. Prompt results.
        if let (Some(bound), Some(run)) = (plan.results_within, run) {
            let took = result_delay(e, plan.client, &plan.group, run, result.at);
            if took > bound {
                violation(
                    "prompt",
                    task,
                    format!(
                        "the result reached Nomad {took:?} after the program's end (or the last fault); bound {:?}",
                        bound
                    ),
                );
            }
        }

        // 5. Stops end in time, with the faults during them accounted for,
        // and begin with the job's kill_signal.
        if let Some(stop_at) = seen.stop_called_at() {
            let first = seen.results.first().map_or(result.at, |r| r.at);
            let faults = e.plan.faults_during(plan.client, stop_at, first);
            if faults.iter().all(|f| f.until.is_some()) {
                let from = faults
                    .iter()
                    .filter_map(|f| f.until)
                    .fold(stop_at, Duration::max);
                // A stop the daemon refused for good goes again when Nomad
                // retries it, on Nomad's schedule, not the driver's.
                let from = if faults.iter().any(|f| f.kind == FaultKind::DenyStops) {
                    seen.stop_calls
                        .iter()
                        .copied()
                        .find(|at| *at >= from)
                        .unwrap_or(from)
                } else {
                    from
                };
                // After a fault the driver may first have to find its
                // streams dead: its heartbeat timeout is its own limit.
                let bound = plan.kill_timeout
                    + STOP_BOUND
                    + if faults.is_empty() {
                        Duration::ZERO
                    } else {
                        elide_driver::HEARTBEAT_TIMEOUT
                    }
                    // A daemon that failed cancels gives no sign when it
                    // takes them again: the stop kept up in the background
                    // finds out at its next try, its back-off apart.
                    + if faults.iter().any(|f| f.kind == FaultKind::FailStops) {
                        elide_driver::REAP_MAX_DELAY
                    } else {
                        Duration::ZERO
                    };
                // The program itself must end in time even when Nomad
                // recovers the task late (a stop sent before recovery is
                // applied at once, not held for it) ...
                let ended = run.and_then(|r| r.ended_at).filter(|at| *at <= first);
                if let Some(took) = ended.map(|at| at.saturating_sub(from)) {
                    if took > bound {
                        violation(
                            "stop-bound",
                            task,
                            format!(
                                "stopped at {stop_at:?}, the program ended {took:?} after {from:?} (the stop, or the end of the last fault during it); bound {bound:?}"
                            ),
                        );
                    }
                }
                // ... and the result reach Nomad in time once it waits on
                // a plugin that holds the task.
                let recovered = seen.attached_at.filter(|at| *at <= first);
                let from = recovered.map_or(from, |at| from.max(at));
                let took = first.saturating_sub(from);
                if took > bound {
                    violation(
                        "stop-bound",
                        task,
                        format!(
                            "stopped at {stop_at:?}, ended {took:?} after {from:?} (the stop, the end of the last fault during it, or the recovery); bound {bound:?}"
                        ),
                    );
                }
            }
            let kill_signal = if plan.kill_signal.is_empty() {
                DEFAULT_KILL_SIGNAL
            } else {
                plan.kill_signal.as_str()
            };
            let destroyed_first = seen.force_destroyed_at.is_some_and(|at| at <= stop_at);
            if let (Some(expected), Some(run), false) =
                (signal_number(kill_signal), run, destroyed_first)
            {
                if let Some((at, got)) = run.signals.iter().find(|(at, _)| *at >= stop_at) {
                    if *got != expected {
                        violation(
                            "kill-signal",
                            task,
                            format!(
                                "the job's kill_signal is {kill_signal} ({expected}), the program's first signal after the stop was {got} at {at:?}"
                            ),
                        );
                    }
                }
            }
        }
    }

    // 3b. Every program that ran belongs to a planned task.
    let planned: BTreeSet<&str> = e
        .plan
        .tasks
        .iter()
        .map(|t| t.execution_id.as_str())
        .collect();
    for (execution_id, runs) in e.truth.runs() {
        if !planned.contains(execution_id.as_str()) {
            violation(
                "planned-runs",
                None,
                format!(
                    "execution {execution_id} ran {} time(s) on {} but no planned task derives it",
                    runs.len(),
                    runs.first().map(|r| r.daemon.as_str()).unwrap_or("?")
                ),
            );
        }
    }

    // 6. Nothing runs at the end, destroyed tasks' executions are gone;
    // 7. departed clients' sessions expire.
    out.extend(crate::held::check(e));
    // 8b. Fingerprints follow the daemon.
    out.extend(crate::fingerprints::check(e));
    // 10. Timeouts and memory limits; 11. log readers that stall or go.
    out.extend(crate::call_errors::check(e));
    out.extend(crate::refusals::check(e));
    out.extend(crate::operator_log::check(e));
    out.extend(crate::connections::check(e));
    out.extend(crate::inspections::check(e));
    out.extend(crate::leftovers::check(e));
    out.extend(crate::task_limits::check(e));
    out.extend(crate::log_readers::check(e));
    // 10. TaskStats and SignalTask.
    out.extend(crate::task_stats::check(e));
    out.extend(crate::signals::check(e));
    out
}

/// Why an explicit failure was not excused by what the program really
/// did, if it was not: a failure is fine only when the program never ran,
/// was force-destroyed, died with its daemon, or its daemon lost the record
/// (its disk wiped, or a crash just as it exited).
fn unexcused_failure(
    e: &Evidence<'_>,
    plan: &crate::plan::TaskPlan,
    run: Option<&ProgramRun>,
    result: &TaskResult,
    destroyed_running: bool,
) -> Option<String> {
    let client = plan.client;
    let run = run?;
    // Ended at its timeout or memory limit: `timeout` and `oom` judge it.
    if destroyed_running || crate::task_limits::ended_at_limit(e, plan, run) {
        return None;
    }
    let Some(ended) = run.ended_at else {
        // Died with its daemon (or is still running: `result-after-end`).
        return None;
    };
    if e.plan
        .daemon_wiped_during(client, run.started_at, result.at)
        || e.plan
            .daemon_down_during(client, run.started_at, ended + EXIT_PERSIST_SLACK)
            .is_some()
    {
        return None;
    }
    let (code, signal) = exit_of(run).unwrap_or_default();
    Some(format!(
        "the program ended by itself with exit_code={code} signal={signal} at {ended:?} and its daemon kept the record"
    ))
}

/// Whether two different answers for one task are explained by every
/// holder of the first one losing it before the second: the later answer
/// is an explicit failure, and in between the daemon's disk was wiped and
/// the plugin went down (its memory gone). Nomad can only have received
/// the first without persisting it (an agent crash in between), so nothing
/// it acted on is contradicted; `real-outcome` still judges the failure.
fn answer_forgotten_by_all(
    e: &Evidence<'_>,
    client: u32,
    one: &TaskResult,
    other: &TaskResult,
) -> bool {
    let (first, later) = if one.at <= other.at {
        (one, other)
    } else {
        (other, one)
    };
    !later.err.is_empty()
        && e.plan.daemon_wiped_during(client, first.at, later.at)
        && e.plan.plugin_down_during(client, first.at, later.at)
}

/// Why a result at `at` came before its program's end, if it did: the
/// program was still running then (its daemon neither saw it exit nor went
/// down with it by `at`).
fn before_the_end(
    e: &Evidence<'_>,
    client: u32,
    run: Option<&ProgramRun>,
    at: Duration,
) -> Option<String> {
    let run = run?;
    if run.started_at > at {
        return Some(format!("the program only started at {:?}", run.started_at));
    }
    match run.ended_at {
        Some(ended) if ended <= at => None,
        Some(ended) => Some(format!("the program ran until {ended:?}")),
        None if e
            .plan
            .daemon_down_during(client, run.started_at, at)
            .is_some() =>
        {
            None
        }
        None => Some("the program was still running".into()),
    }
}

/// `bytes` without the given `[from, to)` offset ranges.
fn without_ranges(bytes: &[u8], ranges: impl Iterator<Item = (u64, u64)>) -> Vec<u8> {
    let mut keep = vec![true; bytes.len()];
    for (from, to) in ranges {
        let (from, to) = (from as usize, (to as usize).min(bytes.len()));
        if from < to {
            keep[from..to].fill(false);
        }
    }
    bytes
        .iter()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(*b))
        .collect()
}

fn first_difference(got: &[u8], expected: &[u8]) -> String {
    let at = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    if at == got.len().min(expected.len()) && got.len() != expected.len() {
        format!(" (identical for the first {at} bytes)")
    } else {
        format!(" (first difference at byte {at})")
    }
}
