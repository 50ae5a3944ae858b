//! `inspect`: what `InspectTask` says of a task after its result is the
//! result: state EXITED, the same exit code, signal and OOM flag as the
//! `WaitTask` answer just received, and a completion time no earlier than
//! the start and no later than the question.

use crate::evidence::{Evidence, Violation};

/// `TaskState::EXITED`.
const EXITED: i32 = 2;

/// The violations of `inspect`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        // Inspected right after the latest answer the agent received.
        let Some(result) = seen.results.last() else {
            continue;
        };
        for inspection in &seen.inspections {
            let mut wrong = Vec::new();
            if inspection.state != EXITED {
                wrong.push(format!("state {}", inspection.state));
            }
            let exit = (result.exit_code, result.signal, result.oom_killed);
            if inspection.exit != exit {
                wrong.push(format!(
                    "result {:?} where WaitTask said {exit:?}",
                    inspection.exit
                ));
            }
            match (inspection.started_at, inspection.completed_at) {
                (Some(started), Some(completed))
                    if started <= completed && completed <= inspection.asked_at => {}
                (started, completed) => wrong.push(format!(
                    "completed_at {completed:?} not between started_at {started:?} and the question at {:?}",
                    inspection.asked_at
                )),
            }
            if !wrong.is_empty() {
                out.push(Violation::of_task(
                    "inspect",
                    &plan.task_id,
                    format!("InspectTask after the result: {}", wrong.join("; ")),
                ));
            }
        }
    }
    out
}
