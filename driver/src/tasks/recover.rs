//! `RecoverTask`: re-attaching to a task from its handle alone.

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskHandle;

use crate::plugin_config::{DaemonEndpoint, PluginConfig};

use super::intents::StopFile;
use super::output::OffsetsFile;
use super::{DriverState, TaskError, TaskManager, RECOVER_CHECK_TIMEOUT};

impl TaskManager {
    /// `RecoverTask`: re-attaches to a task from its handle alone. Known
    /// ids are fine (idempotent); `msgpack_driver_config` is never read.
    pub async fn recover(
        &self,
        config: &PluginConfig,
        handle: TaskHandle,
    ) -> Result<(), TaskError> {
        self.liveness_token()?;
        let task = handle
            .config
            .ok_or_else(|| TaskError::InvalidConfig("RecoverTask handle has no config".into()))?;
        if task.id.is_empty() {
            return Err(TaskError::InvalidConfig(
                "RecoverTask handle has no task id (handle.config.id)".into(),
            ));
        }
        if self.table().contains_key(&task.id) {
            return Ok(());
        }
        let state = DriverState::decode(handle.version, &handle.driver_state)
            .map_err(|e| TaskError::InvalidConfig(format!("task {:?}: {e}", task.id)))?;
        // A task destroyed earlier (an agent that crashed before it recorded
        // the destroy asks again) stays destroyed: recovered, its output
        // would be forwarded again from the start.
        if self.journal.holds(&state.execution_id) {
            return Err(TaskError::NotFound(format!(
                "task {:?} was destroyed; its execution {} is being deleted",
                task.id, state.execution_id
            )));
        }
        // The daemon the task was started on, even if the configuration
        // now names another one.
        let daemon = state
            .daemon
            .as_deref()
            .and_then(DaemonEndpoint::parse)
            .unwrap_or_else(|| config.daemon.clone());
        let context = self.context(config, &daemon, &state.session_id).await;
        let observed = context.hub.register(&state.execution_id);
        // The handle proves the daemon accepted the execution: if a later
        // listing lacks it, it is lost.
        context.hub.confirm(&state.execution_id);
        let request = pb::GetExecutionStatusRequest {
            session_id: state.session_id.clone(),
            execution_id: state.execution_id.clone(),
        };
        let checked = context
            .link
            .unary_within(RECOVER_CHECK_TIMEOUT, request, |mut c, r| async move {
                c.get_execution_status(r).await
            })
            .await;
        match checked {
            Ok(response) => {
                if let Some(status) = response.status {
                    context.hub.deliver(status);
                }
            }
            // Only a daemon that answers "no such execution" (or rejects
            // the ids outright) proves the workload is gone: then Nomad
            // destroys the task and starts it afresh.
            Err(e) if e.is_not_found() || e.code() == tonic::Code::InvalidArgument => {
                context.hub.unregister(&state.execution_id);
                // Nothing will follow this execution again (Nomad starts a
                // new task, with a new id): its files and any remembered
                // stop go.
                OffsetsFile::at(state.offsets_file.clone(), self.host.files.clone()).remove();
                StopFile::of(
                    &state.task_dir,
                    &state.execution_id,
                    self.host.files.clone(),
                )
                .remove();
                self.forget_stop(&task.id);
                return Err(TaskError::NotFound(format!(
                    "task {:?}: execution {} is not on the daemon any more: {e}",
                    task.id, state.execution_id
                )));
            }
            // Anything else (daemon down, restarting, slow) says nothing
            // about the execution. Failing here would make Nomad start a
            // second copy while the first keeps running; instead the task is
            // recovered now and the status feed and output forwarder
            // re-attach in the background, with back-off, once the daemon
            // answers (reporting the execution lost if it is gone by then).
            Err(e) => {
                tracing::warn!(
                    task_id = %task.id,
                    execution_id = %state.execution_id,
                    daemon = %context.link.target(),
                    error = %e,
                    "daemon not reachable while recovering; re-attaching in the background"
                );
            }
        }
        tracing::info!(task_id = %task.id, execution_id = %state.execution_id, "task recovered");
        let pending = self
            .pending_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&task.id);
        if let Some(stop) = &pending {
            // Recorded before the task is followed again, so its ending
            // reads as the stop Nomad asked for (see `exit::unrequested_cancel`).
            StopFile::of(
                &state.task_dir,
                &state.execution_id,
                self.host.files.clone(),
            )
            .write(stop);
            // Forgotten on disk only once the task's own file has it.
            let pending_stops = self.pending_stops.lock().unwrap_or_else(|p| p.into_inner());
            pending_stops.save(self.host.files.as_ref());
        }
        match self.launch(&task, state, context, observed) {
            // Recovered concurrently by another call: fine.
            Err(TaskError::AlreadyStarted(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let recovered = self.task(&task.id)?;
        // A stop asked of this process before the recovery, or of an
        // earlier one (recorded in the task dir): applied until the daemon
        // confirms it, however long it cannot be reached.
        if let Some(stop) = pending.or_else(|| recovered.stop_file(&self.host.files).read()) {
            if recovered.outcome().is_none() {
                tracing::info!(task_id = %task.id, signal = %stop.signal, "applying a stop that came before the recovery");
                recovered.keep_stopping(&self.host.files, stop);
            }
        }
        Ok(())
    }
}
