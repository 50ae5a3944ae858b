//! The limits a task sets on its program, judged against the ground truth:
//!
//! - `timeout`: a program with an `elide_opts.timeout` never runs longer
//!   than the timeout plus the daemon's `timeout_grace` (SIGTERM, then
//!   SIGKILL) plus [`TIMEOUT_SLACK`]; one the daemon ended at its timeout
//!   (truth: its first signal is the SIGTERM at the deadline, with no
//!   `StopTask` or forced destroy before) reaches Nomad as the documented
//!   failure: `err` says it timed out, and the exit code and signal are
//!   the program's real ones; no other task is said to have timed out
//!   (one that ends before its timeout keeps its own exit: `real-outcome`);
//! - `oom`: Nomad's `ExitResult` has `oom_killed = true` and signal 9
//!   exactly for the programs the truth shows OOM-killed at their memory
//!   limit, never for others; and every program got the memory limit
//!   Nomad's `resources` gave its task (`memory-limit`).
//!
//! An outcome the daemon lost (it crashed around the program's end, or
//! lost its disk) is `real-outcome`'s to judge, not these rules'.

use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::plan::TaskPlan;
use crate::truth::ProgramRun;

/// Slack over timeout + `timeout_grace` for the daemon's kill to land.
pub const TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// SIGTERM: what the daemon sends at the timeout.
const SIGTERM: i32 = 15;

/// SIGKILL: how an OOM-killed program ends.
const SIGKILL: i32 = 9;

/// When the daemon signalled `run` at its timeout, if that is how it was
/// ended: its first signal is SIGTERM, at or after its start plus the
/// task's timeout, and neither a `StopTask` nor a forced destroy came
/// before it.
pub fn timed_out_at(e: &Evidence<'_>, plan: &TaskPlan, run: &ProgramRun) -> Option<Duration> {
    let timeout = plan.timeout?;
    let (at, signal) = *run.signals.first()?;
    let seen = e.seen.seen(&plan.task_id);
    let asked_first = seen.stop_called_at().is_some_and(|s| s <= at)
        || seen.force_destroyed_at.is_some_and(|d| d <= at);
    (signal == SIGTERM && at >= run.started_at + timeout && !asked_first).then_some(at)
}

/// Whether `run` was ended at one of its limits (its timeout, its memory).
pub fn ended_at_limit(e: &Evidence<'_>, plan: &TaskPlan, run: &ProgramRun) -> bool {
    run.oom_killed || timed_out_at(e, plan, run).is_some()
}

/// Whether the daemon may have lost `run`'s ending: it went down (or lost
/// its disk) between the program's start and just after its end.
fn ending_maybe_lost(e: &Evidence<'_>, plan: &TaskPlan, run: &ProgramRun, until: Duration) -> bool {
    let end = run.ended_at.unwrap_or(until) + crate::evidence::EXIT_PERSIST_SLACK;
    e.plan
        .daemon_down_during(plan.client, run.started_at, end)
        .is_some()
        || e.plan
            .daemon_wiped_during(plan.client, run.started_at, until)
}

/// Checks `timeout`, `oom` and `memory-limit`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: &str, detail: String| {
        out.push(Violation::of_task(rule, task, detail))
    };
    let grace = e.scenario.daemon.apply(Default::default()).timeout_grace;
    for plan in &e.plan.tasks {
        let task = plan.task_id.as_str();
        let seen = e.seen.seen(task);
        let Some(run) = e.truth.runs_of(&plan.execution_id).into_iter().next() else {
            continue;
        };
        // The program's run time, against its timeout.
        if let (Some(timeout), Some(ended)) = (plan.timeout, run.ended_at) {
            let bound = timeout + grace + TIMEOUT_SLACK;
            let ran = ended.saturating_sub(run.started_at);
            if ran > bound {
                violation(
                    "timeout",
                    task,
                    format!("the program ran {ran:?} with a timeout of {timeout:?} (bound {bound:?}: timeout + timeout_grace + {TIMEOUT_SLACK:?})"),
                );
            }
        }
        // The memory limit Nomad's resources give it.
        let granted = (plan.memory_mb.max(plan.memory_max_mb) as u64) * 1024 * 1024;
        if granted > 0 && run.memory_limit.is_none_or(|limit| limit > granted) {
            violation(
                "memory-limit",
                task,
                format!(
                    "the task's resources grant {} MiB, the program ran with a memory limit of {:?} bytes",
                    granted / (1024 * 1024),
                    run.memory_limit
                ),
            );
        }
        let Some(result) = seen.results.iter().find(|r| r.persisted) else {
            continue;
        };
        let real = crate::evidence::exit_of(&run);
        let told = (result.exit_code, result.signal);
        let lost = ending_maybe_lost(e, plan, &run, result.at);
        match timed_out_at(e, plan, &run) {
            Some(at) if result.err.is_empty() => violation(
                "timeout",
                task,
                format!("the daemon ended the program at its timeout ({at:?}) but Nomad was told a clean exit_code={} signal={}", told.0, told.1),
            ),
            Some(at) if !lost && (!result.err.contains("timed out") || Some(told) != real) => {
                violation(
                    "timeout",
                    task,
                    format!(
                        "the daemon ended the program at its timeout ({at:?}; it ended with {real:?}) but Nomad was told exit_code={} signal={} err={:?}",
                        told.0, told.1, result.err
                    ),
                )
            }
            None if result.err.contains("timed out") => violation(
                "timeout",
                task,
                format!(
                    "Nomad was told the task timed out ({:?}) but the daemon never ended it at a timeout",
                    result.err
                ),
            ),
            _ => {}
        }
        if run.oom_killed && !lost && (!result.oom_killed || result.signal != SIGKILL) {
            violation(
                "oom",
                task,
                format!(
                    "the program was OOM-killed at its memory limit but Nomad was told oom_killed={} signal={} err={:?}",
                    result.oom_killed, result.signal, result.err
                ),
            );
        }
        if !run.oom_killed && result.oom_killed {
            violation(
                "oom",
                task,
                format!(
                    "Nomad was told oom_killed=true but the program was never OOM-killed (it ended with {real:?})"
                ),
            );
        }
    }
    out
}
