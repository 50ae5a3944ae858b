//! `StartTask`: validating, submitting the execution and launching the
//! task's output forwarder and supervisor.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use elide_proto::hashicorp::nomad::plugins::drivers::proto::{TaskConfig, TaskHandle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::daemon_link::identity;
use crate::plugin_config::PluginConfig;
use crate::task_config::ElideTaskConfig;

use super::intents::StopFile;
use super::output::{OffsetsFile, OutputForwarder};
use super::{
    daemon_error, exit, request, task_user, AbortOnDrop, DriverState, Observed, SessionContext,
    Started, Task, TaskError, TaskEvent, TaskManager, DRIVER_STATE_VERSION, OUTPUT_FLUSH_LIMIT,
};

impl TaskManager {
    /// `StartTask`: validates, submits the execution (idempotently, under
    /// an id derived from the task id) and starts following it.
    pub async fn start(
        &self,
        config: &PluginConfig,
        task: TaskConfig,
    ) -> Result<Started, TaskError> {
        self.liveness_token()?;
        if self.table().contains_key(&task.id) {
            return Err(TaskError::AlreadyStarted(task.id));
        }
        let task_config = ElideTaskConfig::decode(&task.msgpack_driver_config)
            .map_err(|e| TaskError::InvalidConfig(format!("task {:?}: {e}", task.name)))?;
        let session_id = self.session_id_for(config);
        let execution_id = identity::execution_id(&task.id);
        let invalid = |e: elide_cty::ConfigError| {
            TaskError::InvalidConfig(format!("task {:?}: {e}", task.name))
        };
        let mut request =
            request::execute_request(&task, &task_config, config, &session_id, &execution_id)
                .map_err(invalid)?;
        let user =
            task_user::resolve(&task.user, &config.users, &*self.host.users).map_err(invalid)?;
        let task_dir = request::task_dir(&task);
        self.host
            .users
            .prepare_task_dir(&task_dir, &user)
            .map_err(|e| {
                TaskError::InvalidConfig(format!(
                    "task {:?}: handing {} to user {:?}: {e}",
                    task.name,
                    task_dir.display(),
                    user.name
                ))
            })?;
        request.run_as_user = user.name;

        let context = self.context(config, &config.daemon, &session_id).await;
        self.create_session(&context.link, config, &session_id)
            .await?;
        context.hub.session_created();
        let observed = context.hub.register(&execution_id);
        let submitted = context
            .link
            .unary(
                request,
                |mut c, r| async move { c.execute_snippet(r).await },
            )
            .await;
        let response = match submitted {
            Ok(response) => response,
            Err(e) => {
                context.hub.unregister(&execution_id);
                if e.code() == tonic::Code::InvalidArgument {
                    return Err(TaskError::InvalidConfig(format!(
                        "task {:?}: the daemon refused it: {e}",
                        task.name
                    )));
                }
                return Err(daemon_error(
                    &format!("submitting task {:?}", task.name),
                    context.link.target(),
                    &e,
                ));
            }
        };
        context.hub.confirm(&execution_id);
        let status = response.status.unwrap_or_default();
        let daemon_instance_id = status.daemon_instance_id.clone();
        context.hub.deliver(status);
        if !response.created {
            tracing::info!(task_id = %task.id, execution_id, "execution already existed (retried StartTask)");
        }

        let state = DriverState {
            daemon: Some(config.daemon.to_string()),
            session_id: session_id.clone(),
            execution_id: execution_id.clone(),
            daemon_instance_id,
            stdout_path: task.stdout_path.clone(),
            stderr_path: task.stderr_path.clone(),
            offsets_file: OffsetsFile::path_for(&task_dir, &execution_id),
            task_dir,
            started_at_unix: self
                .host
                .clock
                .now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        let handle = TaskHandle {
            version: DRIVER_STATE_VERSION,
            config: Some(task.clone()),
            state: elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskState::Running
                as i32,
            driver_state: state.encode(),
        };
        self.launch(&task, state, context, observed)?;
        tracing::info!(task_id = %task.id, execution_id, session_id, "task started");
        Ok(Started { handle })
    }

    /// Registers a task and starts its forwarder and supervisor.
    pub(super) fn launch(
        &self,
        task: &TaskConfig,
        state: DriverState,
        context: Arc<SessionContext>,
        mut observed: watch::Receiver<Observed>,
    ) -> Result<(), TaskError> {
        let alive = self.liveness_token()?;
        let mut detach = self.detach.subscribe();
        let events = self.events.clone();
        let clock = self.host.clock.clone();
        let (task_id, alloc_id, task_name) =
            (task.id.clone(), task.alloc_id.clone(), task.name.clone());
        let on_unwritable = {
            let events = self.events.clone();
            let clock = self.host.clock.clone();
            let (task_id, alloc_id, task_name) =
                (task_id.clone(), alloc_id.clone(), task_name.clone());
            Arc::new(move |path: &std::path::Path, error: &std::io::Error| {
                events.publish(TaskEvent {
                    task_id: task_id.clone(),
                    alloc_id: alloc_id.clone(),
                    task_name: task_name.clone(),
                    timestamp: clock.now(),
                    message: format!("{error}; output to it is discarded"),
                    annotations: [("path".to_owned(), path.display().to_string())].into(),
                });
            })
        };
        let forwarder = OutputForwarder {
            link: context.link.clone(),
            session_id: state.session_id.clone(),
            execution_id: state.execution_id.clone(),
            stdout_path: state.stdout_path.clone(),
            stderr_path: state.stderr_path.clone(),
            offsets_file: OffsetsFile::at(state.offsets_file.clone(), self.host.files.clone()),
            logs: self.host.logs.clone(),
            on_dropped: Box::new(move |stream, from, to| {
                let stream = stream.as_str_name().to_ascii_lowercase();
                tracing::warn!(
                    task_id,
                    stream,
                    from,
                    to,
                    "the daemon no longer had part of the output; it is skipped"
                );
                events.publish(TaskEvent {
                    task_id: task_id.clone(),
                    alloc_id: alloc_id.clone(),
                    task_name: task_name.clone(),
                    timestamp: clock.now(),
                    message: format!(
                        "{} bytes of {stream} were lost (the daemon had already discarded them)",
                        to - from
                    ),
                    annotations: [
                        ("stream".to_owned(), stream.clone()),
                        ("from_offset".to_owned(), from.to_string()),
                        ("to_offset".to_owned(), to.to_string()),
                    ]
                    .into(),
                });
            }),
            on_unwritable,
            detach: self.detach.subscribe(),
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_id = task.id.clone();
        let clock = self.host.clock.clone();
        // Written by StopTask before it asks the daemon (and kept across
        // plugin restarts): whether Nomad asked for the stop.
        let stop_file = StopFile::of(
            &state.task_dir,
            &state.execution_id,
            self.host.files.clone(),
        );
        let supervisor = tokio::spawn(async move {
            let mut forwarding = AbortOnDrop(tokio::spawn(forwarder.run()));
            let final_state = tokio::select! {
                biased;
                _ = detach.wait_for(|detached| *detached) => None,
                final_state = observed.wait_for(Observed::is_final) => {
                    Some(final_state.map(|state| state.clone()))
                }
            };
            let Some(final_state) = final_state else {
                // Driver.Shutdown: the forwarder stops at a chunk boundary;
                // no exit is published (see `detach`).
                let _ = (&mut forwarding.0).await;
                drop(alive);
                let _keep_waiters_open = exit_tx;
                std::future::pending::<()>().await;
                return;
            };
            let outcome = match final_state {
                Ok(final_state) => match &final_state {
                    Observed::Status(status) => {
                        let outcome = exit::outcome_of(status, clock.now());
                        if stop_file.read().is_some() {
                            outcome
                        } else {
                            exit::unrequested_cancel(outcome, status)
                        }
                    }
                    Observed::Lost(why) => exit::lost(why, clock.now()),
                    Observed::Pending => exit::lost("no status", clock.now()),
                },
                Err(_) => exit::lost("the driver stopped following it", clock.now()),
            };
            // The test-only fault switch's driver that gives up declares the
            // task lost at once, without waiting for its output.
            let gave_up = crate::broken!(GivesUpDuringPartitions) && !outcome.err.is_empty();
            if !gave_up
                && tokio::time::timeout(OUTPUT_FLUSH_LIMIT, &mut forwarding.0)
                    .await
                    .is_err()
            {
                tracing::warn!(task_id, limit = ?OUTPUT_FLUSH_LIMIT, "output not complete in time after the task ended; closing the log FIFOs");
            }
            drop(forwarding);
            drop(alive);
            tracing::info!(task_id, exit_code = outcome.exit_code, signal = outcome.signal, err = %outcome.err, "task exited");
            let _ = exit_tx.send(Some(outcome));
        });
        let entry = Arc::new(Task {
            id: task.id.clone(),
            name: task.name.clone(),
            state,
            session: context,
            started_at: self.host.clock.now(),
            started_instant: Instant::now(),
            exit: exit_rx,
            _supervisor: AbortOnDrop(supervisor),
            stopper: Mutex::default(),
            #[cfg(feature = "fault-switch")]
            answered: Default::default(),
        });
        let mut table = self.table();
        if table.contains_key(&task.id) {
            return Err(TaskError::AlreadyStarted(task.id.clone()));
        }
        table.insert(task.id.clone(), entry);
        Ok(())
    }
}
