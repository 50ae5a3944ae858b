//! The `TaskStats` invariants, judged when a scenario sets
//! `cluster.stats_interval` (the agent then collects stats as Nomad's
//! stats hook does, `crate::nomad::stats_hook`):
//!
//! - `stats-cadence`: while a task's program runs and no fault touches its
//!   client, a sample reaches Nomad at least every interval plus
//!   [`CADENCE_SLACK`] (the first one at once on the task's start);
//! - `stats-resume`: a gap in the samples that a fault on the client
//!   explains ends at most [`RESUME_WITHIN`] after the last of those
//!   faults ended (or with the program);
//! - `stats-figures`: every sample names its task, and its resident memory
//!   is a figure the daemon measured for *that* task's program (the
//!   ground truth records each measurement) no longer ago than the links'
//!   latency allows ([`fresh_within`]), or, around a fault, than the
//!   driver's daemon call deadline; 0 is also right once the program is
//!   gone (ended, or died with its daemon);
//! - `stats-end`: no sample arrives after the task's result (beyond one
//!   trip on the links), and the plugin ends the stream at the exit: it
//!   is never left open [`STATS_END_WITHIN`] after the
//!   result.

use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::nomad::{STATS_BACKOFF_LIMIT, STATS_END_WITHIN};
use crate::truth::ProgramRun;

/// Slack over the interval between two samples of an undisturbed task:
/// the `GetExecutionMetrics` round trip and the trip to the agent (a few
/// milliseconds each), with room to spare.
pub const CADENCE_SLACK: Duration = Duration::from_millis(250);

/// How soon after the last fault on its client a task's samples resume:
/// a daemon call under way when the link healed may still run into the
/// driver's call deadline ([`elide_driver::DEFAULT_CALL_TIMEOUT`], 10 s)
/// and end the stream; Nomad's stats hook then calls again after its
/// back-off (at most [`STATS_BACKOFF_LIMIT`], 5 s), and a restarted
/// plugin knows the task only once the agent recovered it (a few hundred
/// milliseconds after it is configured); plus slack.
pub const RESUME_WITHIN: Duration = Duration::from_secs(
    elide_driver::DEFAULT_CALL_TIMEOUT.as_secs() + STATS_BACKOFF_LIMIT.as_secs() + 3,
);

/// How old a figure may be when it reaches Nomad on undisturbed links:
/// measured by the daemon, it travels to the plugin and on to the agent,
/// each trip at most the cluster's largest latency; plus 100 ms.
pub fn fresh_within(e: &Evidence<'_>) -> Duration {
    e.scenario.cluster.latency[1].0 * 2 + Duration::from_millis(100)
}

/// The `stats-*` violations of a run.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(interval) = e.scenario.cluster.stats_interval.map(|s| s.0) else {
        return out;
    };
    let fresh = fresh_within(e);
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        let runs = e.truth.runs_of(&plan.execution_id);
        let mut violation = |rule: &'static str, detail: String| {
            out.push(Violation::of_task(rule, &plan.task_id, detail))
        };
        let result_at = seen.results.first().map(|r| r.at);

        // stats-figures
        for sample in &seen.stats {
            if sample.task_id != plan.task_id {
                violation(
                    "stats-figures",
                    format!(
                        "the sample at {:?} names task {:?}",
                        sample.at, sample.task_id
                    ),
                );
                continue;
            }
            let disturbed = !e
                .plan
                .faults_during(
                    plan.client,
                    sample.at.saturating_sub(elide_driver::DEFAULT_CALL_TIMEOUT),
                    sample.at,
                )
                .is_empty();
            let oldest = sample.at.saturating_sub(if disturbed {
                elide_driver::DEFAULT_CALL_TIMEOUT + fresh
            } else {
                fresh
            });
            let measured = |run: &ProgramRun| {
                run.memory
                    .iter()
                    .any(|(at, rss)| *rss == sample.rss_bytes && (oldest..=sample.at).contains(at))
            };
            if runs.iter().any(measured) {
                continue;
            }
            if sample.rss_bytes == 0 && runs.iter().all(|r| gone_by(e, plan.client, r, sample.at)) {
                continue;
            }
            let whose: Vec<&str> = e
                .plan
                .tasks
                .iter()
                .filter(|other| other.task_id != plan.task_id)
                .filter(|other| e.truth.runs_of(&other.execution_id).iter().any(measured))
                .map(|other| other.task_id.as_str())
                .collect();
            let measured_then: Vec<u64> = runs
                .iter()
                .flat_map(|r| r.memory.iter())
                .filter(|(at, _)| (oldest..=sample.at).contains(at))
                .map(|(_, rss)| *rss)
                .collect();
            violation(
                "stats-figures",
                format!(
                    "the sample at {:?} reports {} bytes resident; the daemon measured {measured_then:?} for its program since {oldest:?}{}",
                    sample.at,
                    sample.rss_bytes,
                    if whose.is_empty() {
                        String::new()
                    } else {
                        format!(" (that figure is of {whose:?})")
                    }
                ),
            );
        }

        // stats-end
        if let Some(result_at) = result_at {
            if let Some(late) = seen.stats.iter().find(|s| s.at > result_at + fresh) {
                violation(
                    "stats-end",
                    format!(
                        "a sample arrived at {:?}, after the result at {result_at:?}",
                        late.at
                    ),
                );
            }
            if let Some(at) = seen.stats_left_open {
                violation(
                    "stats-end",
                    format!(
                        "the TaskStats stream was still open at {at:?}, {STATS_END_WITHIN:?} after the result at {result_at:?}"
                    ),
                );
            }
        }

        // stats-cadence and stats-resume: the gaps while the program ran.
        let (Some(started), Some(run)) = (seen.started_at, runs.first()) else {
            continue;
        };
        let Some(end) = run.ended_at.or(result_at) else {
            continue;
        };
        let mut arrivals: Vec<Duration> = seen
            .stats
            .iter()
            .map(|s| s.at)
            .filter(|at| (started..=end).contains(at))
            .collect();
        arrivals.push(end);
        let mut from = started;
        for to in arrivals {
            let gap = to.saturating_sub(from);
            if gap > interval + CADENCE_SLACK {
                let faults = e.plan.faults_during(plan.client, from, to);
                if faults.is_empty() {
                    violation(
                        "stats-cadence",
                        format!(
                            "no sample from {from:?} to {to:?} ({gap:?}; the interval is {interval:?}), with no fault on client {}",
                            plan.client
                        ),
                    );
                } else if let Some(calm) = faults
                    .iter()
                    .map(|f| f.until)
                    .collect::<Option<Vec<_>>>()
                    .and_then(|ends| ends.into_iter().max())
                {
                    // The last fault touching the gap may be followed by
                    // others that begin within the resume bound.
                    let calm = e
                        .plan
                        .last_fault_end(plan.client, &plan.group, calm + RESUME_WITHIN)
                        .max(calm);
                    if to > calm + RESUME_WITHIN {
                        violation(
                            "stats-resume",
                            format!(
                                "no sample from {from:?} to {to:?}: the faults on client {} ended at {calm:?}, the samples resumed {:?} later (bound {RESUME_WITHIN:?})",
                                plan.client,
                                to - calm
                            ),
                        );
                    }
                }
            }
            from = to;
        }
    }
    out
}

/// What the stats of a run amounted to, for the report.
#[derive(Debug, Clone, Default)]
pub struct StatsTally {
    /// Samples received.
    pub samples: usize,
    /// The longest time from the end of a fault to a task's next sample
    /// while its program still ran.
    pub longest_resume: Duration,
}

/// The stats of a run, counted.
pub fn tally(e: &Evidence<'_>) -> StatsTally {
    let mut tally = StatsTally::default();
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        tally.samples += seen.stats.len();
        let Some(end) = e
            .truth
            .runs_of(&plan.execution_id)
            .first()
            .and_then(|r| r.ended_at)
        else {
            continue;
        };
        for fault in e.plan.faults.iter().filter(|f| f.client == plan.client) {
            let Some(until) = fault.until else { continue };
            if seen.started_at.is_none_or(|s| s > until) || end < until {
                continue;
            }
            if let Some(next) = seen.stats.iter().find(|s| (until..=end).contains(&s.at)) {
                tally.longest_resume = tally.longest_resume.max(next.at - until);
            }
        }
    }
    tally
}

/// Whether `run`'s program was gone by `at`: it ended, or its daemon went
/// down after it started.
fn gone_by(e: &Evidence<'_>, client: u32, run: &ProgramRun, at: Duration) -> bool {
    run.ended_at.is_some_and(|end| end <= at)
        || e.plan
            .daemon_down_during(client, run.started_at, at)
            .is_some()
}
