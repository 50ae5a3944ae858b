//! Nomad's log readers that stall or go away (`stall_logs`,
//! `drop_log_reader`), judged with what logmon read ([`crate::logs`]):
//!
//! - `log-stall-bound`: a task whose reader was away while it ran or
//!   finished still gets its result within the driver's
//!   `OUTPUT_FLUSH_LIMIT` plus [`LOG_STALL_SLACK`] after its program's end
//!   (or the end of the last other fault on its client); tasks whose
//!   readers were not hit keep their own bounds (`prompt`);
//! - `lost-output` (the part about unread output): output the driver says
//!   the log reader never took lies within what the program wrote, and is
//!   claimed only for a task whose reader was away within the flush limit
//!   before its result (`output` checks, byte for byte, that everything
//!   else arrived once and in order: after the reader is back, output goes
//!   on from where it stopped);
//! - `no-busy-write`: no stream sees more than
//!   [`MAX_WRITE_ATTEMPTS_PER_SECOND`] write attempts in any simulated
//!   second: a writer facing a full pipe waits to be woken, it does not
//!   spin.

use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::plan::TaskPlan;

/// Slack over the driver's flush limit for the result to reach Nomad.
pub const LOG_STALL_SLACK: Duration = Duration::from_secs(5);

/// The most write attempts one stream may see in a simulated second. A
/// reading logmon takes each chunk whole (at most 64 KiB per attempt, so
/// this is over 60 MiB/s); a stalled one takes none, and a writer that
/// waits is woken once per drain.
pub const MAX_WRITE_ATTEMPTS_PER_SECOND: u32 = 1000;

/// The log faults that hit `plan`'s readers during `[from, to]`.
fn reader_away_during(e: &Evidence<'_>, plan: &TaskPlan, from: Duration, to: Duration) -> bool {
    e.plan.faults.iter().any(|f| {
        f.kind.only_logs()
            && f.client == plan.client
            && f.hits(&plan.group)
            && f.at <= to
            && f.until.is_none_or(|u| u >= from)
    })
}

/// The latest end, by `by`, of a fault on `plan`'s client that is not
/// about log readers.
fn last_other_fault_end(e: &Evidence<'_>, plan: &TaskPlan, by: Duration) -> Duration {
    e.plan
        .faults
        .iter()
        .filter(|f| f.client == plan.client && !f.kind.only_logs() && f.at <= by)
        .filter_map(|f| f.until)
        .max()
        .unwrap_or_default()
}

/// Checks `log-stall-bound`, unread `lost-output` and `no-busy-write`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: &str, detail: String| {
        out.push(Violation::of_task(rule, task, detail))
    };
    let limit = elide_driver::OUTPUT_FLUSH_LIMIT;
    for plan in &e.plan.tasks {
        let task = plan.task_id.as_str();
        let seen = e.seen.seen(task);
        let run = e.truth.runs_of(&plan.execution_id).into_iter().next();
        let result = seen.results.iter().find(|r| r.persisted);
        if let (Some(run), Some(result)) = (&run, result) {
            if let Some(ended) = run.ended_at {
                if reader_away_during(e, plan, run.started_at, result.at) {
                    let since = ended.max(last_other_fault_end(e, plan, result.at));
                    let took = result.at.saturating_sub(since);
                    let bound = limit + LOG_STALL_SLACK;
                    if took > bound {
                        violation(
                            "log-stall-bound",
                            task,
                            format!("its log reader was away; the result reached Nomad {took:?} after the program's end (or the last other fault); bound {bound:?}"),
                        );
                    }
                }
            }
        }
        for (name, from, to) in &seen.unread {
            let written = run.as_ref().map_or(0, |r| {
                if name == "stdout" {
                    r.stdout.len()
                } else {
                    r.stderr.len()
                }
            }) as u64;
            let excused = result
                .is_some_and(|r| reader_away_during(e, plan, r.at.saturating_sub(limit), r.at));
            if from >= to || *to > written || !excused {
                violation(
                    "lost-output",
                    task,
                    format!(
                        "{name}: the driver reported [{from}, {to}) unread by Nomad's log reader; the program wrote {written} bytes{}",
                        if excused { "" } else { " and the reader was not away within the flush limit before the result" }
                    ),
                );
            }
        }
        let logs = e.logs.get(&plan.client).cloned().unwrap_or_default();
        for (name, path) in [
            ("stdout", plan.stdout_path()),
            ("stderr", plan.stderr_path()),
        ] {
            let stream = logs.stream(&path);
            if let Some((second, attempts)) = stream
                .attempts
                .iter()
                .find(|(_, n)| **n > MAX_WRITE_ATTEMPTS_PER_SECOND)
            {
                violation(
                    "no-busy-write",
                    task,
                    format!("{name}: {attempts} write attempts in simulated second {second} (bound {MAX_WRITE_ATTEMPTS_PER_SECOND})"),
                );
            }
        }
    }
    out
}
