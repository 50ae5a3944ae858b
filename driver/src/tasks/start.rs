//! `StartTask`: validating, submitting the execution and launching the
//! task's output forwarder and supervisor.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use elide_proto::elide::daemon::v1 as pb;

use elide_proto::hashicorp::nomad::plugins::drivers::proto::{TaskConfig, TaskHandle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::daemon_link::identity;
use crate::plugin_config::PluginConfig;
use crate::task_config::ElideTaskConfig;

use super::intents::StopFile;
use super::log_lines;
use super::output::{Offsets, OffsetsFile, OutputForwarder};
use super::{
    daemon_error, exit, request, task_user, AbortOnDrop, DriverState, ExitOutcome, Observed,
    SessionContext, Started, Task, TaskError, TaskEvent, TaskEventHub, TaskManager,
    DRIVER_STATE_VERSION, OUTPUT_FLUSH_LIMIT,
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
            tracing::info!(task_id = %task.id, execution_id, "{}", log_lines::EXECUTION_EXISTED);
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
        let report_lost = lost_output_reporter(
            self.events.clone(),
            self.host.clock.clone(),
            (task_id.clone(), alloc_id.clone(), task_name.clone()),
        );
        let delivered = Arc::new(Mutex::new(Offsets::default()));
        // One state for the forwarder, the flush limit's record and the
        // task's destroy (which removes it for good).
        let offsets_file = OffsetsFile::at(state.offsets_file.clone(), self.host.files.clone());
        let forwarder = OutputForwarder {
            link: context.link.clone(),
            session_id: state.session_id.clone(),
            execution_id: state.execution_id.clone(),
            stdout_path: state.stdout_path.clone(),
            stderr_path: state.stderr_path.clone(),
            offsets_file: offsets_file.clone(),
            logs: self.host.logs.clone(),
            on_dropped: {
                let report = report_lost.clone();
                Box::new(move |stream, from, to| {
                    report(stream, from, to, LostBecause::DaemonDiscarded)
                })
            },
            on_unwritable,
            detach: self.detach.subscribe(),
            delivered: delivered.clone(),
        };
        let offsets = offsets_file.clone();
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
            // What the daemon says the program wrote, in all.
            let produced = match &final_state {
                Ok(Observed::Ended(status)) => Some(Offsets {
                    stdout: status.stdout_bytes,
                    stderr: status.stderr_bytes,
                }),
                _ => None,
            };
            let outcome = match final_state {
                Ok(final_state) => match &final_state {
                    Observed::Ended(status) => {
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
            if !gives_up_without_output(&outcome)
                && tokio::time::timeout(OUTPUT_FLUSH_LIMIT, &mut forwarding.0)
                    .await
                    .is_err()
            {
                tracing::warn!(task_id, limit = ?OUTPUT_FLUSH_LIMIT, "output not complete in time after the task ended; closing the log FIFOs");
                drop(forwarding);
                // Nomad's log reader took nothing more for the whole limit
                // (stalled, or gone): what it never got is reported lost,
                // exactly from the last byte its FIFO took, and recorded as
                // written so that no later forwarder sends it after all.
                if let Some(produced) = produced {
                    let delivered = *delivered.lock().unwrap_or_else(|p| p.into_inner());
                    for stream in [pb::OutputStream::Stdout, pb::OutputStream::Stderr] {
                        let (from, to) = (delivered.of(stream), produced.of(stream));
                        if to > from {
                            report_lost(stream, from, to, LostBecause::LogReaderStalled);
                        }
                    }
                    let _ = offsets.store(Offsets {
                        stdout: delivered.stdout.max(produced.stdout),
                        stderr: delivered.stderr.max(produced.stderr),
                    });
                }
            } else {
                drop(forwarding);
            }
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
            offsets_file,
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

/// Why part of a task's output never reached Nomad's log reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostBecause {
    /// The daemon had discarded it (beyond its retention) before the
    /// forwarder read it.
    DaemonDiscarded,
    /// The log FIFO's reader (Nomad's logmon) took none of it within
    /// [`OUTPUT_FLUSH_LIMIT`] after the task ended.
    LogReaderStalled,
}

impl LostBecause {
    /// The `reason` annotation of its task event.
    pub fn as_str(self) -> &'static str {
        match self {
            LostBecause::DaemonDiscarded => "daemon_discarded",
            LostBecause::LogReaderStalled => "log_reader_stalled",
        }
    }
}

/// Reports lost output of one task: a warning in the plugin's log and a
/// task event with the byte range (`stream`, `from_offset`, `to_offset`)
/// and the `reason`.
type LostOutputReporter = Arc<dyn Fn(pb::OutputStream, u64, u64, LostBecause) + Send + Sync>;

fn lost_output_reporter(
    events: TaskEventHub,
    clock: Arc<dyn elide_proto::wall_clock::WallClock>,
    (task_id, alloc_id, task_name): (String, String, String),
) -> LostOutputReporter {
    Arc::new(move |stream, from, to, why| {
        let stream = stream.as_str_name().to_ascii_lowercase();
        tracing::warn!(
            task_id,
            stream,
            from,
            to,
            reason = why.as_str(),
            "part of the output is lost"
        );
        let message = match why {
            LostBecause::DaemonDiscarded => format!(
                "{} bytes of {stream} were lost (the daemon had already discarded them)",
                to - from
            ),
            LostBecause::LogReaderStalled => format!(
                "{} bytes of {stream} were lost (Nomad's log reader took none of them within {:?} after the task ended)",
                to - from,
                OUTPUT_FLUSH_LIMIT
            ),
        };
        events.publish_sticky(TaskEvent {
            task_id: task_id.clone(),
            alloc_id: alloc_id.clone(),
            task_name: task_name.clone(),
            timestamp: clock.now(),
            message,
            annotations: [
                ("stream".to_owned(), stream.clone()),
                ("from_offset".to_owned(), from.to_string()),
                ("to_offset".to_owned(), to.to_string()),
                ("reason".to_owned(), why.as_str().to_owned()),
            ]
            .into(),
        });
    })
}

/// Whether the test-only fault switch's driver that gives up declares the
/// task lost at once, without waiting for its output. A constant `false`
/// without the `fault-switch` feature (kept apart so mutation testing can
/// leave it out with the rest of the switch's code).
fn gives_up_without_output(outcome: &ExitOutcome) -> bool {
    crate::broken!(GivesUpDuringPartitions) && !outcome.err.is_empty()
}
