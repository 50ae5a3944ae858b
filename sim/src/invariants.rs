//! What must hold after every run, whatever the faults:
//!
//! 1. every started task reaches exactly one terminal result;
//! 2. that result is the program's real outcome (from the ground truth)
//!    or an explicit failure, never a wrong success or a wrong exit code;
//! 3. no program runs twice, and a refused task runs not at all;
//! 4. a task's log streams received exactly the program's output, minus
//!    the byte ranges the driver reported lost (a prefix when the program
//!    died with its daemon or the task failed explicitly); and every writer
//!    was closed;
//! 5. a stopped task ends within its kill_timeout plus [`STOP_BOUND`] when
//!    no fault hits its client meanwhile;
//! 6. at the end no program runs on any daemon, and no daemon still holds
//!    the execution of a destroyed task;
//! 7. a departed client's session expires;
//! 8. the run finishes (no wedge) and the plugin never surprised Nomad;
//! 9. where the scenario says so, results are prompt (`results_within`)
//!    and exits are the ones known in advance (`exit_code`, `signal`).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use elide_daemon::ExitInfo;

use crate::evidence::{Evidence, Latency};
use crate::plan::daemon_host;
use crate::scenario::TaskExpect;
use crate::truth::ProgramRun;

/// Slack over `kill_timeout` for a stopped task's result to reach Nomad.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// The task, if it is about one.
    pub task: Option<String>,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task {
            Some(task) => write!(f, "[{}] {task}: {}", self.rule, self.detail),
            None => write!(f, "[{}] {}", self.rule, self.detail),
        }
    }
}

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
}

/// How long a result took to reach Nomad: from the program's end, or from
/// the end of the last fault on its client if that is later (a program
/// that died with its daemon counts from there).
fn result_delay(e: &Evidence<'_>, client: u32, run: &ProgramRun, at: Duration) -> Duration {
    let since = run
        .ended_at
        .unwrap_or_default()
        .max(e.plan.last_fault_end(client, at));
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
            .map(|(_, from, to)| to.saturating_sub(*from))
            .sum::<u64>();
        if let Some(result) = seen.results.first() {
            if let Some(run) = e.truth.runs_of(&plan.execution_id).first() {
                summary.slowest = summary
                    .slowest
                    .max(result_delay(e, plan.client, run, result.at));
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
    summary
}

fn exit_of(run: &ProgramRun) -> Option<(i32, i32)> {
    run.exit.map(|exit| match exit {
        ExitInfo::Code(code) => (code, 0),
        ExitInfo::Signal(signal) => (0, signal as i32),
    })
}

/// Checks every invariant; returns the broken ones.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: Option<&str>, detail: String| {
        out.push(Violation {
            rule,
            task: task.map(str::to_owned),
            detail,
        })
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
        match (plan.expect, &seen.rejected) {
            (TaskExpect::Rejected, None) if seen.start_calls > 0 => violation(
                "rejections",
                task,
                "a misconfigured task was accepted".into(),
            ),
            (TaskExpect::Rejected, _) if !runs.is_empty() => violation(
                "rejections",
                task,
                "a misconfigured task's program ran".into(),
            ),
            (TaskExpect::Run, Some(why)) => violation(
                "rejections",
                task,
                format!("a valid task was refused: {why}"),
            ),
            _ => {}
        }
        if seen.rejected.is_some() {
            continue;
        }

        // 1. Exactly one result.
        let result = match seen.results.len() {
            1 => &seen.results[0],
            0 if gone_for_good => continue,
            0 => {
                violation("one-result", task, "no result was ever delivered".into());
                continue;
            }
            n => {
                violation("one-result", task, format!("{n} results were delivered"));
                &seen.results[0]
            }
        };

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
        } else if !e.scenario.expect.failures_allowed && !destroyed_running {
            violation(
                "real-outcome",
                task,
                format!("explicit failure where none was expected: {}", result.err),
            );
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

        // 9. Prompt results.
        if let (Some(bound), Some(run)) = (plan.results_within, run) {
            let took = result_delay(e, plan.client, run, result.at);
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

        // 5. Stops end in time.
        if let Some(stop_at) = seen.stop_called_at {
            let bound = plan.kill_timeout + STOP_BOUND;
            let took = result.at.saturating_sub(stop_at);
            if took > bound && !e.plan.disturbed(plan.client, stop_at, stop_at + bound) {
                violation(
                    "stop-bound",
                    task,
                    format!("stopped task took {took:?} to end (bound {bound:?})"),
                );
            }
        }
    }

    // 6. Nothing runs at the end.
    for (client, (boots, running)) in &e.daemons {
        if !running {
            continue;
        }
        let live = e.truth.live_on(&daemon_host(*client), *boots);
        if !live.is_empty() {
            violation(
                "nothing-runs",
                None,
                format!(
                    "{} still runs {} program(s) after every task was destroyed: {}",
                    daemon_host(*client),
                    live.len(),
                    live.join(", ")
                ),
            );
        }
    }

    // 6b. Destroyed tasks' executions are gone from their daemon. A
    // daemon the observer could not list is reported once; one it never
    // got to list (the run did not settle) is already a `finishes` failure.
    let mut unlisted = BTreeSet::new();
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        if seen.destroyed_at.is_none() || departed.contains(&plan.client) {
            continue;
        }
        match e.held.get(&plan.client) {
            Some(Some(held)) if held.executions.contains(&plan.execution_id) => violation(
                "cleanup",
                Some(&plan.task_id),
                format!(
                    "destroyed, but {} still holds execution {}",
                    daemon_host(plan.client),
                    plan.execution_id
                ),
            ),
            Some(None) => {
                unlisted.insert(plan.client);
            }
            Some(Some(_)) | None => {}
        }
    }
    for client in unlisted {
        violation(
            "cleanup",
            None,
            format!("could not list what {} holds", daemon_host(client)),
        );
    }

    // 7. Departed clients' sessions expire.
    for client in departed {
        match e.held.get(&client) {
            Some(Some(held)) if !held.sessions.is_empty() => violation(
                "session-expiry",
                None,
                format!(
                    "client {client} is gone but its daemon still holds {}",
                    held.sessions.join(", ")
                ),
            ),
            Some(Some(_)) | None => {}
            Some(None) => violation(
                "session-expiry",
                None,
                format!("could not list the sessions of client {client}'s daemon"),
            ),
        }
    }
    out
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
