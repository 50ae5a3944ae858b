//! What Nomad does to a running task from outside its wait: the kill with
//! its back-off, and forced destroys.

use std::sync::Arc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;

use super::plugin::Plugin;
use super::{AgentDisk, KILL_BACKOFF_BASELINE, KILL_BACKOFF_LIMIT, KILL_FAILURE_LIMIT};
use crate::observe::Observations;
use crate::plan::TaskPlan;
use crate::trace::Trace;

/// Nomad's `killTask` for one plugin: `StopTask`, retried after
/// failures with back-offs of 5 s, 20 s, 80 s, 120 s (four times longer
/// each time, at most [`KILL_BACKOFF_LIMIT`]) up to [`KILL_FAILURE_LIMIT`]
/// calls, ending early once the task has its result; then Nomad only waits
/// for the exit, with no time limit.
pub(super) struct KillRun {
    pub(super) plugin: Arc<Plugin>,
    pub(super) disk: AgentDisk,
    pub(super) seen: Observations,
    pub(super) trace: Trace,
    pub(super) who: String,
    pub(super) plan: TaskPlan,
    /// Notified once the first `StopTask` was answered (or the task had
    /// its result before).
    pub(super) answered: Arc<tokio::sync::Notify>,
}

impl KillRun {
    pub(super) async fn run(self) {
        let label = format!("{}#{}", self.plan.group, self.plan.index);
        for failures in 0..KILL_FAILURE_LIMIT {
            if self.disk.get(&self.plan.task_id).result {
                self.answered.notify_one();
                return;
            }
            let now = turmoil::sim_elapsed().unwrap_or_default();
            self.seen.task(&self.plan.task_id, |t| {
                t.stop_calls.push(now);
            });
            self.trace.record(&self.who, format!("{label} StopTask"));
            let stopped = self
                .plugin
                .driver()
                .stop_task(drivers::StopTaskRequest {
                    task_id: self.plan.task_id.clone(),
                    timeout: Some(elide_proto::duration_to_proto(self.plan.kill_timeout)),
                    signal: self.plan.kill_signal.clone(),
                })
                .await;
            self.answered.notify_one();
            let Err(status) = stopped else { return };
            let now = turmoil::sim_elapsed().unwrap_or_default();
            self.seen.task(&self.plan.task_id, |t| {
                t.stop_failures.push((now, status.message().to_owned()))
            });
            let backoff = (KILL_BACKOFF_BASELINE * 4u32.pow(failures)).min(KILL_BACKOFF_LIMIT);
            self.trace.record(
                &self.who,
                format!(
                    "{label} StopTask failed: {} (retry in {backoff:?})",
                    status.message()
                ),
            );
            tokio::time::sleep(backoff).await;
        }
        self.trace.record(
            &self.who,
            format!("{label} failed to kill task; waiting for its exit"),
        );
    }
}

/// What Nomad does to a running task from outside its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interruption {
    /// `DestroyTask(force = true)` with no stop first, as Nomad does when
    /// it garbage-collects an allocation whose kill failed.
    ForceDestroy,
}

/// One [`Interruption`] of a task, retried until it is accepted or the
/// task has its result.
pub(super) struct InterruptRun {
    pub(super) what: Interruption,
    pub(super) plugin: Arc<Plugin>,
    pub(super) disk: AgentDisk,
    pub(super) seen: Observations,
    pub(super) trace: Trace,
    pub(super) who: String,
    pub(super) plan: TaskPlan,
}

impl InterruptRun {
    pub(super) async fn run(self, after: Duration) {
        sleep_until_after_start(&self.seen, &self.plan, after).await;
        let label = format!("{}#{}", self.plan.group, self.plan.index);
        let (call, attempt) = match self.what {
            Interruption::ForceDestroy => ("DestroyTask", "DestroyTask(force) while running"),
        };
        loop {
            if self.disk.get(&self.plan.task_id).result {
                return;
            }
            let now = turmoil::sim_elapsed().unwrap_or_default();
            self.seen.task(&self.plan.task_id, |t| {
                match self.what {
                    Interruption::ForceDestroy => {
                        t.force_destroyed_at.get_or_insert(now);
                        t.destroy_calls += 1;
                    }
                };
            });
            self.trace.record(&self.who, format!("{label} {attempt}"));
            let task_id = self.plan.task_id.clone();
            let answered = match self.what {
                Interruption::ForceDestroy => self
                    .plugin
                    .driver()
                    .destroy_task(drivers::DestroyTaskRequest {
                        task_id,
                        force: true,
                    })
                    .await
                    .map(drop),
            };
            match answered {
                Ok(()) => {
                    let answered = turmoil::sim_elapsed().unwrap_or_default();
                    self.seen.task(&self.plan.task_id, |t| {
                        t.destroy_answered.get_or_insert((now, answered));
                    });
                    return;
                }
                // Nomad retries a failed kill.
                Err(status) => self.trace.record(
                    &self.who,
                    format!("{label} {call} failed: {}", status.message()),
                ),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Sleeps until `after` past the task's (first successful) start.
pub(super) async fn sleep_until_after_start(seen: &Observations, plan: &TaskPlan, after: Duration) {
    let started = seen.seen(&plan.task_id).started_at.unwrap_or_default();
    let at = started + after;
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}
