//! What Nomad is told when a call fails (`rejections`, `start-errors`,
//! `stop-errors`): a misconfigured task is refused, never run, with a
//! message that says what was wrong; a valid one is never refused; a start
//! Nomad retries blames the network only when a fault touched the client;
//! and `StopTask` fails only when a fault kept the driver from the daemon
//! (its contract: a stop the daemon refuses falls back to what it accepts,
//! and a stop of an ended task succeeds, since a failed stop makes Nomad
//! retry for minutes and then wait with no limit). Nomad shows these
//! messages to the job's author and the operator: a daemon's refusal
//! presented as "not reachable" sends them after a network problem that is
//! not there.

use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::scenario::TaskExpect;

/// How far back a fault may explain a `StartTask` error that says the
/// daemon was not reachable, or a failed `StopTask` (the driver's call
/// deadlines and back-off).
const FAULT_WINDOW: Duration = Duration::from_secs(30);

/// The violations of `rejections`, `start-errors` and `stop-errors`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: &str, detail: String| {
        out.push(Violation::of_task(rule, task, detail));
    };
    for plan in &e.plan.tasks {
        let task = plan.task_id.as_str();
        let seen = e.seen.seen(&plan.task_id);
        let ran = !e.truth.runs_of(&plan.execution_id).is_empty();
        match (plan.expect, &seen.rejected) {
            (TaskExpect::Rejected, None) if seen.start_calls > 0 => violation(
                "rejections",
                task,
                "a misconfigured task was accepted".into(),
            ),
            (TaskExpect::Rejected, _) if ran => violation(
                "rejections",
                task,
                "a misconfigured task's program ran".into(),
            ),
            (TaskExpect::Rejected, Some(why))
                if plan
                    .refusal
                    .as_ref()
                    .is_some_and(|r| !why.contains(r.as_str()))
                    || why.contains("not reachable") =>
            {
                violation(
                    "rejections",
                    task,
                    format!("the refusal does not say what was wrong: {why}"),
                )
            }
            (TaskExpect::Run, Some(why)) => violation(
                "rejections",
                task,
                format!("a valid task was refused: {why}"),
            ),
            _ => {}
        }
        let undisturbed = |at: Duration| {
            !e.plan
                .calls_disturbed(plan.client, at.saturating_sub(FAULT_WINDOW), at)
        };
        for (at, why) in &seen.start_failures {
            if why.contains("not reachable") && undisturbed(*at) {
                violation(
                    "start-errors",
                    task,
                    format!("StartTask blamed reachability with no fault on its client: {why}"),
                );
            }
        }
        for (at, why) in &seen.stop_failures {
            if undisturbed(*at) {
                violation(
                    "stop-errors",
                    task,
                    format!("StopTask failed with no fault on its client: {why}"),
                );
            }
        }
    }
    out
}
