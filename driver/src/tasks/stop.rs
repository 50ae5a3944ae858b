//! `StopTask`: the stop request, its fallbacks when the daemon refuses it,
//! stops of tasks not in the table, and the wait for the exit.

use std::time::Duration;

use tokio::sync::watch;

use crate::daemon_link::{identity, CallError};
use crate::plugin_config::PluginConfig;

use super::cancel::{allowed_grace, cancel_execution, next_stop_step, CancelOutcome, StopStep};
use super::intents::StopRequest;
use super::{
    daemon_error, ExitOutcome, Task, TaskError, TaskManager, DEFAULT_STOP_SIGNAL, MAX_STOP_GRACE,
    STOP_WAIT_MARGIN,
};

impl TaskManager {
    /// `StopTask`: `signal` (SIGINT when empty), SIGKILL after `timeout`;
    /// returns once the task has exited or, failing that, once the kill is
    /// irrevocably under way. Unknown or exited tasks are fine.
    ///
    /// An error makes Nomad retry `StopTask` for minutes ("failed to kill
    /// task") and then wait for `WaitTask` with no time limit, so errors are
    /// kept for the one case a retry can fix: the daemon could not be told
    /// to stop the program at all. A signal name or grace the daemon refuses
    /// falls back to what it accepts rather than leaving the task running.
    ///
    /// A task this plugin does not know may still run on the daemon: after
    /// a plugin restart Nomad's kill path can call `StopTask` before its
    /// wait path has called `RecoverTask`. Its execution id follows from the
    /// task id, so with `config` the execution is cancelled anyway; a stop
    /// is never lost.
    pub async fn stop(
        &self,
        config: Option<&PluginConfig>,
        task_id: &str,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), TaskError> {
        let signal = if signal.is_empty() || crate::broken!(IgnoresKillSignal) {
            DEFAULT_STOP_SIGNAL
        } else {
            signal
        };
        let grace = timeout.min(MAX_STOP_GRACE);
        let Ok(task) = self.task(task_id) else {
            if crate::broken!(ForgetsStopBeforeRecovery) {
                return Ok(());
            }
            // Remembered, and kept on disk, before the cancel is sent and
            // even when it is delivered: a later RecoverTask then records
            // that Nomad asked for this stop (and repeats it, which is
            // harmless), or applies it if it was not delivered, also in a
            // plugin process started after this one crashed mid-call.
            self.remember_stop(task_id, signal, grace);
            if let Some(config) = config {
                self.stop_unknown(config, task_id, signal, grace).await;
            }
            return Ok(());
        };
        if task.outcome().is_some() {
            return Ok(());
        }
        // Recorded first, so a plugin restarted before the daemon confirms
        // still applies it when the task is recovered.
        task.stop_file(&self.host.files)
            .write(&StopRequest::new(signal, grace));
        let link = &task.session.link;
        let mut cancelled = cancel(&task, signal, grace).await;
        let mut refusals = 0;
        loop {
            match (
                next_stop_step(refusals, CancelOutcome::of(&cancelled)),
                &cancelled,
            ) {
                (StopStep::RetryWithAllowedGrace, Err(e)) => {
                    // Most likely a grace above the daemon's max_cancel_grace
                    // (an operator may set Nomad's max_kill_timeout higher):
                    // ask for the longest grace the daemon allows.
                    let allowed = allowed_grace(link).await;
                    tracing::warn!(task_id, signal, ?grace, ?allowed, error = %e, "daemon refused the stop request; retrying with the grace it allows");
                    cancelled = cancel(&task, signal, grace.min(allowed)).await;
                }
                (StopStep::Kill, _) => {
                    tracing::warn!(
                        task_id,
                        signal,
                        "daemon refused the stop signal; killing the task instead"
                    );
                    cancelled = cancel(&task, "SIGKILL", Duration::ZERO).await;
                }
                (StopStep::MarkLost, Err(e)) => {
                    task.session
                        .hub
                        .mark_lost(&task.state.execution_id, &e.to_string());
                    break;
                }
                (StopStep::Fail { keep_stopping }, Err(e)) => {
                    // Nomad retries a failed stop only a few times, then
                    // waits for the exit with no limit: keep asking in the
                    // background.
                    if keep_stopping {
                        task.keep_stopping(&self.host.files, StopRequest::new(signal, grace));
                    }
                    return Err(daemon_error(
                        &format!("stopping task {task_id:?}"),
                        link.target(),
                        e,
                    ));
                }
                // Accepted (every other step comes only from an error).
                _ => break,
            }
            refusals += 1;
        }
        tracing::info!(task_id, signal, ?grace, "stopping task");
        let limit = timeout + STOP_WAIT_MARGIN;
        let end = await_stop(task.exit.clone(), limit, STOP_WAIT_MARGIN, || async {
            tracing::warn!(task_id, "task did not exit in time after its stop signal; sending SIGKILL");
            if let Err(e) = cancel(&task, "SIGKILL", Duration::ZERO).await {
                tracing::warn!(task_id, error = %e, "could not send SIGKILL; the daemon kills the task when its grace ends");
            }
        })
        .await;
        if end == StopEnd::NotYetExited {
            tracing::warn!(task_id, "task is not reported exited yet; the kill is under way and WaitTask will report the exit");
        }
        Ok(())
    }

    /// `StopTask` for a task not in the table: cancels the execution its id
    /// maps to, if the daemon has it and can be reached (otherwise the
    /// remembered stop is applied if the task is recovered).
    async fn stop_unknown(
        &self,
        config: &PluginConfig,
        task_id: &str,
        signal: &str,
        grace: Duration,
    ) {
        let link = self.link_to(&config.daemon);
        let cancelled = cancel_execution(
            &link,
            &self.session_id_for(config),
            &identity::execution_id(task_id),
            signal,
            grace,
        )
        .await;
        match cancelled {
            Ok(_) => {
                tracing::info!(task_id, signal, "StopTask for a task not recovered yet: its execution was cancelled on the daemon");
            }
            Err(e) if e.is_transport() => {
                tracing::debug!(task_id, error = %e, "StopTask for an unknown task: daemon not reachable");
            }
            // Not on the daemon (any more), or already finished: nothing runs.
            Err(e) => tracing::debug!(task_id, error = %e, "StopTask for an unknown task"),
        }
    }

    /// Forgets a remembered stop of a task that will not be recovered (it
    /// was destroyed, or its execution is gone), on disk too.
    pub(super) fn forget_stop(&self, task_id: &str) {
        let mut pending = self.pending_stops.lock().unwrap_or_else(|p| p.into_inner());
        if pending.take(task_id).is_some() {
            pending.save(self.host.files.as_ref());
        }
    }

    /// Remembers a stop of a task not in the table, for its recovery (up
    /// to [`MAX_PENDING_STOPS`]).
    fn remember_stop(&self, task_id: &str, signal: &str, grace: Duration) {
        // Saved under the lock, as the delete journal is: two stops saving
        // at once must not leave the older set on disk.
        let mut pending = self.pending_stops.lock().unwrap_or_else(|p| p.into_inner());
        pending.remember(task_id, StopRequest::new(signal, grace));
        pending.save(self.host.files.as_ref());
        drop(pending);
        tracing::debug!(
            task_id,
            signal,
            "StopTask for an unknown task; applied if it is recovered"
        );
    }
}

/// `CancelExecution` of a task's execution.
pub(super) async fn cancel(task: &Task, signal: &str, grace: Duration) -> Result<(), CallError> {
    cancel_execution(
        &task.session.link,
        &task.state.session_id,
        &task.state.execution_id,
        signal,
        grace,
    )
    .await
}

/// How the wait after a stop request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEnd {
    /// The task exited within the stop timeout.
    Exited,
    /// It exited only after the force kill.
    ExitedAfterForceKill,
    /// Not reported exited even after the force kill (e.g. the daemon is
    /// unreachable): the kill is under way, `WaitTask` reports the exit.
    NotYetExited,
}

/// After the stop signal was accepted: waits up to `limit` for the exit;
/// if it has not come, runs `force_kill` once and waits up to `after_kill`
/// more. Never fails, never waits longer.
pub async fn await_stop<F, Fut>(
    exit: watch::Receiver<Option<ExitOutcome>>,
    limit: Duration,
    after_kill: Duration,
    force_kill: F,
) -> StopEnd
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let exited = |limit: Duration| {
        let mut exit = exit.clone();
        async move {
            // A closed channel means the task was destroyed: nothing runs.
            tokio::time::timeout(limit, exit.wait_for(Option::is_some))
                .await
                .is_ok()
        }
    };
    if exited(limit).await {
        return StopEnd::Exited;
    }
    force_kill().await;
    if exited(after_kill).await {
        StopEnd::ExitedAfterForceKill
    } else {
        StopEnd::NotYetExited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Stands in for the stop timeout and margin; the outcomes below do not
    /// depend on how long it is.
    const SHORT: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_task_that_does_not_exit_is_force_killed_and_stop_still_returns() {
        let (_exit_tx, exit_rx) = watch::channel(None::<ExitOutcome>);
        let kills = AtomicUsize::new(0);
        let end = await_stop(exit_rx, SHORT, SHORT, || async {
            kills.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        assert_eq!(end, StopEnd::NotYetExited);
        assert_eq!(kills.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn exit_after_the_force_kill_is_reported() {
        let (exit_tx, exit_rx) = watch::channel(None::<ExitOutcome>);
        let end = await_stop(exit_rx, SHORT, SHORT, || async {
            exit_tx.send_replace(Some(ExitOutcome::default()));
        })
        .await;
        assert_eq!(end, StopEnd::ExitedAfterForceKill);
    }

    #[tokio::test]
    async fn exit_in_time_needs_no_force_kill() {
        let (exit_tx, exit_rx) = watch::channel(None::<ExitOutcome>);
        exit_tx.send_replace(Some(ExitOutcome::default()));
        let end = await_stop(exit_rx, SHORT, SHORT, || async {
            panic!("no force kill for a task that exited");
        })
        .await;
        assert_eq!(end, StopEnd::Exited);
    }
}
