//! `InspectTask` after a result. Nomad's own client no longer calls it
//! (1.10 on; 1.9 only for remote-task drivers), but the protocol has it
//! and tools reading a plugin may: the agent asks once it has a task's
//! result and before it destroys the task, and `inspect` (in
//! [`crate::inspections`]) holds the answer to the result.

use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;
use std::time::SystemTime;

use super::task_run::TaskRun;
use crate::observe::Inspection;

impl TaskRun {
    /// Inspects the task; a plugin that is down or has not recovered the
    /// task yet is skipped (nothing to judge).
    pub(super) async fn inspect(&mut self) {
        let answer = self
            .driver()
            .inspect_task(drivers::InspectTaskRequest {
                task_id: self.plan.task_id.clone(),
            })
            .await;
        let Ok(answer) = answer else { return };
        let asked_at = SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default();
        let status = answer.into_inner().task.unwrap_or_default();
        let result = status.result.unwrap_or_default();
        let inspection = Inspection {
            asked_at,
            state: status.state,
            exit: (result.exit_code, result.signal, result.oom_killed),
            started_at: status.started_at.and_then(|t| SystemTime::try_from(t).ok()),
            completed_at: status
                .completed_at
                .and_then(|t| SystemTime::try_from(t).ok()),
        };
        self.seen
            .task(&self.plan.task_id, |t| t.inspections.push(inspection));
    }
}
