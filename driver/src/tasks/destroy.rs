//! `DestroyTask`: forgetting a task and deleting its execution, journaled
//! and reaped in the background until the daemon confirms.

use tokio::task::JoinHandle;

use crate::daemon_link::{identity, DaemonLink};
use crate::plugin_config::{DaemonEndpoint, PluginConfig};

use super::intents::{reap, PendingDelete, Reap};
use super::{TaskError, TaskManager, DESTROY_WAIT_LIMIT};

impl TaskManager {
    /// `DestroyTask`: kills the task if running (only with `force`),
    /// removes its execution from the daemon and forgets it. Unknown ids
    /// are fine; idempotent.
    ///
    /// Nomad calls it once and ignores its errors, so failing while the
    /// daemon is unreachable would only orphan the execution. Instead the
    /// delete is journaled ([`super::intents::DeleteJournal`]), the task is forgotten at
    /// once and a background reaper (`intents::reap`) keeps deleting the execution, with
    /// back-off, until the daemon confirms it is gone; a plugin restarted
    /// meanwhile resumes it from the journal ([`TaskManager::resume`]).
    /// The call waits up to [`DESTROY_WAIT_LIMIT`] for that confirmation,
    /// so with a healthy daemon nothing runs any more when it returns.
    ///
    /// A task this plugin does not hold (destroyed after a plugin restart
    /// before it was recovered, or never recovered) may still have an
    /// execution: the one its id maps to, in the configured session, which
    /// is deleted the same way.
    pub async fn destroy(
        &self,
        config: Option<&PluginConfig>,
        task_id: &str,
        force: bool,
    ) -> Result<(), TaskError> {
        let Ok(task) = self.task(task_id) else {
            let entry = PendingDelete {
                task_id: task_id.to_owned(),
                daemon: config.map(|c| c.daemon.to_string()),
                session_id: config.map(|c| self.session_id_for(c)),
                execution_id: identity::execution_id(task_id),
                // It may still run: killing a finished one is harmless.
                running: true,
            };
            self.journal.add(entry.clone());
            // A stop that came before a recovery that will not happen now.
            self.forget_stop(task_id);
            match config {
                Some(config) => {
                    tracing::debug!(task_id, execution_id = %entry.execution_id, "DestroyTask for a task not held; deleting the execution its id maps to");
                    let reaping = self.start_reap(config, entry);
                    self.await_reap(task_id, reaping).await;
                }
                // Deleted once SetConfig names the daemon (from the journal).
                None => tracing::debug!(
                    task_id,
                    "DestroyTask before SetConfig; the delete is applied once configured"
                ),
            }
            return Ok(());
        };
        let running = task.outcome().is_none();
        if running && !force {
            return Err(TaskError::Precondition(format!(
                "task {task_id:?} is still running; stop it first or destroy with force"
            )));
        }
        let entry = PendingDelete {
            task_id: task_id.to_owned(),
            daemon: task.state.daemon.clone(),
            session_id: Some(task.state.session_id.clone()),
            execution_id: task.state.execution_id.clone(),
            running,
        };
        self.journal.add(entry.clone());
        let reaping = self.spawn_reap(task.session.link.clone(), entry);
        task.session.hub.unregister(&task.state.execution_id);
        task.offsets_file.remove();
        task.stop_file(&self.host.files).remove();
        self.table().remove(task_id);
        self.events.forget(task_id);
        self.await_reap(task_id, reaping).await;
        Ok(())
    }

    /// Waits up to [`DESTROY_WAIT_LIMIT`] for a reap.
    async fn await_reap(&self, task_id: &str, reaping: Option<JoinHandle<()>>) {
        let Some(mut reaping) = reaping else { return };
        match tokio::time::timeout(DESTROY_WAIT_LIMIT, &mut reaping).await {
            Ok(_) => tracing::info!(task_id, "task destroyed"),
            Err(_) => tracing::warn!(
                task_id,
                waited = ?DESTROY_WAIT_LIMIT,
                "task forgotten, but the daemon has not confirmed its execution is gone; still deleting it in the background"
            ),
        }
    }

    /// After `SetConfig`: keeps pending stops under
    /// `config.driver_state_dir` (adding those an earlier plugin process
    /// left), and resumes every delete in the journal there (left by an
    /// earlier plugin process, or asked of this one before it was
    /// configured).
    pub fn resume(&self, config: &PluginConfig) {
        self.pending_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open(&config.driver_state_dir, self.host.files.as_ref());
        for entry in self.journal.open(&config.driver_state_dir) {
            tracing::info!(task_id = %entry.task_id, execution_id = %entry.execution_id, "resuming the delete of a destroyed task's execution");
            self.start_reap(config, entry);
        }
    }

    /// A reap of `entry` on its daemon (the configured one if it names none).
    fn start_reap(
        &self,
        config: &PluginConfig,
        mut entry: PendingDelete,
    ) -> Option<JoinHandle<()>> {
        let daemon = entry
            .daemon
            .as_deref()
            .and_then(DaemonEndpoint::parse)
            .unwrap_or_else(|| config.daemon.clone());
        if entry.session_id.is_none() {
            entry.session_id = Some(self.session_id_for(config));
        }
        self.spawn_reap(self.link_to(&daemon), entry)
    }

    /// Starts a [`reap`] unless one is under way for the execution; the
    /// journal entry goes once it ends.
    fn spawn_reap(&self, link: DaemonLink, entry: PendingDelete) -> Option<JoinHandle<()>> {
        let execution_id = entry.execution_id.clone();
        if !self
            .reaping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(execution_id.clone())
        {
            return None;
        }
        let (journal, reaping) = (self.journal.clone(), self.reaping.clone());
        let target = Reap {
            task_id: entry.task_id,
            link,
            session_id: entry.session_id.unwrap_or_default(),
            execution_id: execution_id.clone(),
            running: entry.running,
        };
        Some(tokio::spawn(async move {
            reap(target).await;
            journal.remove(&execution_id);
            reaping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&execution_id);
        }))
    }
}
