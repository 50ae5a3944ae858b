//! `nomad alloc signal`: the task runner's `Signal` (`task_runner.go`)
//! calls `SignalTask` once on the task's driver handle and hands the answer
//! to the user; it never retries. A task that has its result has no
//! handle any more, so it is not signalled.

use std::sync::Arc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;

use super::kill::sleep_until_after_start;
use super::plugin::Plugin;
use super::AgentDisk;
use crate::observe::{Observations, SignalCall};
use crate::plan::TaskPlan;
use crate::trace::Trace;

/// A task's planned `SignalTask` calls, one after another.
pub(super) struct Signaller {
    pub(super) plugin: Arc<Plugin>,
    pub(super) disk: AgentDisk,
    pub(super) seen: Observations,
    pub(super) trace: Trace,
    pub(super) who: String,
    pub(super) plan: TaskPlan,
}

impl Signaller {
    pub(super) async fn run(self) {
        let label = format!("{}#{}", self.plan.group, self.plan.index);
        // Calls already made before an agent restart are not made again.
        let made = self.seen.seen(&self.plan.task_id).signal_calls.len();
        for (after, signal) in self.plan.signals.iter().skip(made) {
            sleep_until_after_start(&self.seen, &self.plan, *after).await;
            if self.disk.get(&self.plan.task_id).result {
                return;
            }
            // Noted before it is sent: a delivery during a call the agent
            // never saw answered is still that call's.
            let mut index = 0;
            self.seen.task(&self.plan.task_id, |t| {
                t.signal_calls.push(SignalCall {
                    signal: signal.clone(),
                    sent_at: now(),
                    answered_at: None,
                    error: None,
                });
                index = t.signal_calls.len() - 1;
            });
            self.trace
                .record(&self.who, format!("{label} SignalTask {signal}"));
            let answer = self
                .plugin
                .driver()
                .signal_task(drivers::SignalTaskRequest {
                    task_id: self.plan.task_id.clone(),
                    signal: signal.clone(),
                })
                .await;
            let error = answer
                .err()
                .map(|status| (status.code(), status.message().to_owned()));
            self.trace.record(
                &self.who,
                match &error {
                    None => format!("{label} SignalTask {signal}: ok"),
                    Some((code, message)) => {
                        format!("{label} SignalTask {signal} failed: {code:?} ({message})")
                    }
                },
            );
            self.seen.task(&self.plan.task_id, |t| {
                let call = &mut t.signal_calls[index];
                call.answered_at = Some(now());
                call.error = error;
            });
        }
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}
