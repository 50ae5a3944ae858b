//! The task lifecycle against the daemon, free of gRPC servers: the
//! Nomad-facing service only translates to and from [`TaskManager`].
//!
//! * [`TaskManager`] keeps the task table (keyed by Nomad's task id) and
//!   one [`SessionContext`] per daemon session it uses.
//! * A session context owns the daemon link, the [`StatusHub`] and the
//!   status feed filling it (one `WatchSession` stream, or polling).
//! * Each task has an output forwarder ([`output`]) and a supervisor that
//!   turns the terminal status into an [`ExitOutcome`] once every byte of
//!   output has reached Nomad's FIFOs; the outcome is published exactly
//!   once on a `watch` channel, which any number of `WaitTask` calls read.

pub mod backoff;
pub mod driver_state;
pub mod exit;
pub mod intents;
pub mod output;
pub mod request;
pub mod stats;
pub mod status_feed;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{TaskConfig, TaskHandle};
use futures::Stream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::daemon_link::identity;
use crate::daemon_link::{CallError, DaemonLink, DialerFactory};
use crate::driver::TaskEvent;
use crate::host::Host;
use crate::plugin_config::{DaemonEndpoint, PluginConfig};
use crate::task_config::ElideTaskConfig;

pub use driver_state::{DriverState, DRIVER_STATE_VERSION};
pub use exit::ExitOutcome;
pub use stats::ResourceSample;
pub use status_feed::{Observed, StatusHub};

use intents::{keep_stopping, reap, DeleteJournal, PendingDelete, Reap, StopFile, StopRequest};
use output::{OffsetsFile, OutputForwarder};

/// After the terminal status, how long the output forwarder may take to
/// write the rest of the output before the result is published anyway.
pub const OUTPUT_FLUSH_LIMIT: Duration = Duration::from_secs(30);
/// `StopTask` waits for the exit up to its `timeout` plus this margin (the
/// daemon SIGKILLs at `timeout`; this covers the kill and the flush).
pub const STOP_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// Longest cancel grace asked of the daemon (its default
/// `max_cancel_grace`; Nomad's `max_kill_timeout` defaults to 30 s).
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(300);
/// Deadline of `DeleteExecution(force)`: the daemon waits up to 10 s for
/// the program to be gone.
pub const FORCE_DELETE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `DestroyTask` waits for the daemon to confirm the execution
/// is gone before returning anyway (the deletion goes on in the
/// background).
pub const DESTROY_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// First delay between attempts to delete a destroyed task's execution.
pub const REAP_FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between attempts to delete a destroyed task's execution.
pub const REAP_MAX_DELAY: Duration = Duration::from_secs(30);
/// Deadline of the one daemon call `RecoverTask` makes: Nomad recovers the
/// tasks of a node one after another on its start-up path.
pub const RECOVER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Most stops of not-yet-recovered tasks remembered at once (the oldest is
/// forgotten beyond this).
pub const MAX_PENDING_STOPS: usize = 1024;
/// Signal sent by `StopTask` when the job sets no `kill_signal` (Nomad's
/// exec drivers use SIGINT too).
pub const DEFAULT_STOP_SIGNAL: &str = "SIGINT";

/// Why a lifecycle operation failed. The service maps each to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// `SetConfig` was never called.
    #[error("{}", crate::driver::NOT_CONFIGURED)]
    NotConfigured,
    /// The task's configuration is wrong; restarting will not help.
    #[error("{0}")]
    InvalidConfig(String),
    /// The daemon failed or could not be reached; `recoverable` says
    /// whether Nomad restarting the task may help.
    #[error("{message}")]
    Daemon {
        /// What happened.
        message: String,
        /// Whether a retry may succeed.
        recoverable: bool,
    },
    /// `StartTask` for a task id that is already running.
    #[error("task with ID {0:?} already started")]
    AlreadyStarted(String),
    /// Unknown task id, or the workload is gone.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the task's state.
    #[error("{0}")]
    Precondition(String),
}

fn daemon_error(context: &str, target: &str, e: &CallError) -> TaskError {
    let message = if e.is_transport() {
        format!("{context}: daemon not reachable at {target}: {e}")
    } else {
        format!("{context}: {e}")
    };
    let recoverable = !matches!(
        e.code(),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied
    );
    TaskError::Daemon {
        message,
        recoverable,
    }
}

fn unknown_task(task_id: &str) -> TaskError {
    TaskError::NotFound(format!("task {task_id:?} is not known to the elide driver"))
}

/// Aborts a background task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One daemon session the driver uses: its link and its status feed.
pub struct SessionContext {
    link: DaemonLink,
    session_id: String,
    hub: Arc<StatusHub>,
    _feed: AbortOnDrop<()>,
}

impl SessionContext {
    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
}

/// Whether a task is still running, as `InspectTask` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSnapshot {
    /// Nomad's task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// When `StartTask` (or the recovered start) happened.
    pub started_at: SystemTime,
    /// The result once it exited.
    pub outcome: Option<ExitOutcome>,
}

/// A task in the table.
struct Task {
    id: String,
    name: String,
    alloc_id: String,
    state: DriverState,
    session: Arc<SessionContext>,
    started_at: SystemTime,
    started_instant: Instant,
    exit: watch::Receiver<Option<ExitOutcome>>,
    _supervisor: AbortOnDrop<()>,
    /// Keeps asking the daemon to stop the program while it cannot be
    /// reached ([`keep_stopping`]); ends with the task.
    stopper: Mutex<Option<AbortOnDrop<()>>>,
}

impl Task {
    fn outcome(&self) -> Option<ExitOutcome> {
        self.exit.borrow().clone()
    }

    fn stop_file(&self, files: &Arc<dyn crate::host::StateFiles>) -> StopFile {
        StopFile::of(
            &self.state.task_dir,
            &self.state.execution_id,
            files.clone(),
        )
    }

    /// Records `stop` in the task dir and makes sure the daemon gets it:
    /// a background stopper retries until the daemon confirms or the task
    /// has exited (replacing an earlier one).
    fn keep_stopping(&self, files: &Arc<dyn crate::host::StateFiles>, stop: StopRequest) {
        self.stop_file(files).write(&stop);
        let stopper = tokio::spawn(keep_stopping(
            self.id.clone(),
            self.session.link.clone(),
            self.state.session_id.clone(),
            self.state.execution_id.clone(),
            stop,
            self.exit.clone(),
        ));
        *self.stopper.lock().unwrap_or_else(|p| p.into_inner()) = Some(AbortOnDrop(stopper));
    }
}

/// What `StartTask` returns to Nomad.
#[derive(Debug, Clone)]
pub struct Started {
    /// The handle to persist (`version`, echoed config, `driver_state`).
    pub handle: TaskHandle,
}

/// The task table and everything that talks to the daemon for it.
pub struct TaskManager {
    dialers: DialerFactory,
    host: Host,
    contexts: tokio::sync::Mutex<BTreeMap<(String, String), Arc<SessionContext>>>,
    tasks: Mutex<BTreeMap<String, Arc<Task>>>,
    events: broadcast::Sender<TaskEvent>,
    /// Stops of tasks not (yet) in the table that could not be delivered:
    /// applied if the task is recovered. Keyed by task id, with the order of
    /// arrival for the size limit.
    pending_stops: Mutex<BTreeMap<String, (u64, String, Duration)>>,
    /// Deletes the daemon has not confirmed, kept across plugin restarts.
    journal: Arc<DeleteJournal>,
    /// Executions a [`reap`] is under way for (one each).
    reaping: Arc<Mutex<BTreeSet<String>>>,
}

impl TaskManager {
    /// An empty table publishing task events on `events`, reaching daemons
    /// through `dialers`, on `host`.
    pub fn new(events: broadcast::Sender<TaskEvent>, dialers: DialerFactory, host: Host) -> Self {
        TaskManager {
            dialers,
            contexts: tokio::sync::Mutex::default(),
            tasks: Mutex::default(),
            events,
            pending_stops: Mutex::default(),
            journal: Arc::new(DeleteJournal::new(host.files.clone())),
            reaping: Arc::default(),
            host,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task(&self, task_id: &str) -> Result<Arc<Task>, TaskError> {
        self.table()
            .get(task_id)
            .cloned()
            .ok_or_else(|| unknown_task(task_id))
    }

    /// The session this client's driver uses under `config`.
    pub fn session_id_for(&self, config: &PluginConfig) -> String {
        identity::session_id(
            &self.host.identity,
            &identity::daemon_session_config(&config.session),
        )
    }

    /// The context of `session_id` on `daemon`, created (and
    /// its status feed started) on first use. Never talks to the daemon
    /// itself: the feed finds out how to follow the session (and retries
    /// while the daemon is unreachable), so `RecoverTask` can re-attach to a
    /// task while the daemon is briefly down.
    async fn context(
        &self,
        config: &PluginConfig,
        daemon: &DaemonEndpoint,
        session_id: &str,
    ) -> Arc<SessionContext> {
        let key = (daemon.to_string(), session_id.to_owned());
        let mut contexts = self.contexts.lock().await;
        if let Some(context) = contexts.get(&key) {
            return context.clone();
        }
        let link = DaemonLink::to_endpoint(&self.dialers, daemon);
        let hub = Arc::new(StatusHub::default());
        let feed = tokio::spawn(status_feed::follow_session(
            link.clone(),
            hub.clone(),
            session_id.to_owned(),
            config.status_mode,
            config.poll_interval,
        ));
        tracing::info!(session_id, daemon = %link.target(), mode = config.status_mode.name(), "following daemon session");
        let context = Arc::new(SessionContext {
            link,
            session_id: session_id.to_owned(),
            hub,
            _feed: AbortOnDrop(feed),
        });
        contexts.insert(key, context.clone());
        context
    }

    /// Creates this client's session on the daemon if it does not exist
    /// (idempotent for the same id and config; never deletes anything).
    pub async fn ensure_session(&self, config: &PluginConfig) -> Result<String, TaskError> {
        let session_id = self.session_id_for(config);
        let link = DaemonLink::to_endpoint(&self.dialers, &config.daemon);
        self.create_session(&link, config, &session_id).await?;
        Ok(session_id)
    }

    async fn create_session(
        &self,
        link: &DaemonLink,
        config: &PluginConfig,
        session_id: &str,
    ) -> Result<(), TaskError> {
        let hostname = self.host.hostname().to_owned();
        let request = pb::CreateSessionRequest {
            session_id: session_id.to_owned(),
            config: Some(identity::daemon_session_config(&config.session)),
            labels: [
                ("created_by".to_owned(), "nomad-driver-elide".to_owned()),
                ("hostname".to_owned(), hostname),
            ]
            .into(),
        };
        link.unary(request, |mut c, r| async move { c.create_session(r).await })
            .await
            .map(drop)
            .map_err(|e| daemon_error(&format!("creating session {session_id}"), link.target(), &e))
    }

    /// `StartTask`: validates, submits the execution (idempotently, under
    /// an id derived from the task id) and starts following it.
    pub async fn start(
        &self,
        config: &PluginConfig,
        task: TaskConfig,
    ) -> Result<Started, TaskError> {
        if self.table().contains_key(&task.id) {
            return Err(TaskError::AlreadyStarted(task.id));
        }
        let task_config = ElideTaskConfig::decode(&task.msgpack_driver_config)
            .map_err(|e| TaskError::InvalidConfig(format!("task {:?}: {e}", task.name)))?;
        let session_id = self.session_id_for(config);
        let execution_id = identity::execution_id(&task.id);
        let request =
            request::execute_request(&task, &task_config, config, &session_id, &execution_id)
                .map_err(|e| TaskError::InvalidConfig(format!("task {:?}: {e}", task.name)))?;

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

        let task_dir = request::task_dir(&task);
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
    fn launch(
        &self,
        task: &TaskConfig,
        state: DriverState,
        context: Arc<SessionContext>,
        mut observed: watch::Receiver<Observed>,
    ) -> Result<(), TaskError> {
        let events = self.events.clone();
        let clock = self.host.clock.clone();
        let (task_id, alloc_id, task_name) =
            (task.id.clone(), task.alloc_id.clone(), task.name.clone());
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
                let _ = events.send(TaskEvent {
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
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_id = task.id.clone();
        let clock = self.host.clock.clone();
        let supervisor = tokio::spawn(async move {
            let mut forwarding = AbortOnDrop(tokio::spawn(forwarder.run()));
            let outcome = match observed.wait_for(Observed::is_final).await {
                Ok(final_state) => match &*final_state {
                    Observed::Status(status) => exit::outcome_of(status, clock.now()),
                    Observed::Lost(why) => exit::lost(why, clock.now()),
                    Observed::Pending => exit::lost("no status", clock.now()),
                },
                Err(_) => exit::lost("the driver stopped following it", clock.now()),
            };
            if tokio::time::timeout(OUTPUT_FLUSH_LIMIT, &mut forwarding.0)
                .await
                .is_err()
            {
                tracing::warn!(task_id, limit = ?OUTPUT_FLUSH_LIMIT, "output not complete in time after the task ended; closing the log FIFOs");
            }
            drop(forwarding);
            tracing::info!(task_id, exit_code = outcome.exit_code, signal = outcome.signal, err = %outcome.err, "task exited");
            let _ = exit_tx.send(Some(outcome));
        });
        let entry = Arc::new(Task {
            id: task.id.clone(),
            name: task.name.clone(),
            alloc_id: task.alloc_id.clone(),
            state,
            session: context,
            started_at: self.host.clock.now(),
            started_instant: Instant::now(),
            exit: exit_rx,
            _supervisor: AbortOnDrop(supervisor),
            stopper: Mutex::default(),
        });
        let mut table = self.table();
        if table.contains_key(&task.id) {
            return Err(TaskError::AlreadyStarted(task.id.clone()));
        }
        table.insert(task.id.clone(), entry);
        Ok(())
    }

    /// `RecoverTask`: re-attaches to a task from its handle alone. Known
    /// ids are fine (idempotent); `msgpack_driver_config` is never read.
    pub async fn recover(
        &self,
        config: &PluginConfig,
        handle: TaskHandle,
    ) -> Result<(), TaskError> {
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
        match self.launch(&task, state, context, observed) {
            // Recovered concurrently by another call: fine.
            Err(TaskError::AlreadyStarted(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let pending = self
            .pending_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task.id)
            .map(|(_, signal, grace)| StopRequest::new(&signal, grace));
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

    /// `WaitTask`: the task's exit, once it exited and its output is
    /// complete. Any number of concurrent callers.
    pub async fn wait(&self, task_id: &str) -> Result<ExitOutcome, TaskError> {
        let mut exit = self.task(task_id)?.exit.clone();
        let outcome = match exit.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_default(),
            // The task was destroyed while we waited.
            Err(_) => exit::lost("the task was destroyed", self.host.clock.now()),
        };
        Ok(outcome)
    }

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
        let signal = if signal.is_empty() {
            DEFAULT_STOP_SIGNAL
        } else {
            signal
        };
        let grace = timeout.min(MAX_STOP_GRACE);
        let Ok(task) = self.task(task_id) else {
            let delivered = match config {
                Some(config) => self.stop_unknown(config, task_id, signal, grace).await,
                None => false,
            };
            if !delivered {
                self.remember_stop(task_id, signal, grace);
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
        if let Err(e) = &cancelled {
            if e.code() == tonic::Code::InvalidArgument {
                // Most likely a grace above the daemon's max_cancel_grace
                // (an operator may set Nomad's max_kill_timeout higher):
                // ask for the longest grace the daemon allows.
                let allowed = max_cancel_grace(link).await.unwrap_or(Duration::ZERO);
                tracing::warn!(task_id, signal, ?grace, ?allowed, error = %e, "daemon refused the stop request; retrying with the grace it allows");
                cancelled = cancel(&task, signal, grace.min(allowed)).await;
            }
        }
        if matches!(&cancelled, Err(e) if e.code() == tonic::Code::InvalidArgument) {
            // Still refused: the signal name is unknown to the daemon.
            tracing::warn!(
                task_id,
                signal,
                "daemon refused the stop signal; killing the task instead"
            );
            cancelled = cancel(&task, "SIGKILL", Duration::ZERO).await;
        }
        match cancelled {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {
                task.session
                    .hub
                    .mark_lost(&task.state.execution_id, &e.to_string());
            }
            Err(e) => {
                // Nomad retries a failed stop only a few times, then waits
                // for the exit with no limit: keep asking in the background.
                if e.is_transport() {
                    task.keep_stopping(&self.host.files, StopRequest::new(signal, grace));
                }
                return Err(daemon_error(
                    &format!("stopping task {task_id:?}"),
                    link.target(),
                    &e,
                ));
            }
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
    /// maps to, if the daemon has it. False if the daemon could not be
    /// asked (the stop is then applied if the task is recovered).
    async fn stop_unknown(
        &self,
        config: &PluginConfig,
        task_id: &str,
        signal: &str,
        grace: Duration,
    ) -> bool {
        let link = DaemonLink::to_endpoint(&self.dialers, &config.daemon);
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
                true
            }
            Err(e) if e.is_transport() => false,
            // Not on the daemon (any more), or already finished: nothing runs.
            Err(e) => {
                tracing::debug!(task_id, error = %e, "StopTask for an unknown task");
                true
            }
        }
    }

    /// Remembers a stop that could not be delivered to a task not in the
    /// table (up to [`MAX_PENDING_STOPS`]).
    fn remember_stop(&self, task_id: &str, signal: &str, grace: Duration) {
        let mut pending = self.pending_stops.lock().unwrap_or_else(|p| p.into_inner());
        let order = pending.values().map(|(n, _, _)| n + 1).max().unwrap_or(0);
        pending.insert(task_id.to_owned(), (order, signal.to_owned(), grace));
        if pending.len() > MAX_PENDING_STOPS {
            let oldest = pending
                .iter()
                .min_by_key(|(_, (n, _, _))| *n)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                pending.remove(&oldest);
            }
        }
        tracing::debug!(
            task_id,
            signal,
            "StopTask for an unknown task; applied if it is recovered"
        );
    }

    /// `DestroyTask`: kills the task if running (only with `force`),
    /// removes its execution from the daemon and forgets it. Unknown ids
    /// are fine; idempotent.
    ///
    /// Nomad calls it once and ignores its errors, so failing while the
    /// daemon is unreachable would only orphan the execution. Instead the
    /// delete is journaled ([`DeleteJournal`]), the task is forgotten at
    /// once and a background [`reap`] keeps deleting the execution, with
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
        OffsetsFile::at(task.state.offsets_file.clone(), self.host.files.clone()).remove();
        task.stop_file(&self.host.files).remove();
        self.table().remove(task_id);
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

    /// After `SetConfig`: resumes every delete in the journal under
    /// `config.driver_state_dir` (left by an earlier plugin process, or
    /// asked of this one before it was configured).
    pub fn resume(&self, config: &PluginConfig) {
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
        self.spawn_reap(DaemonLink::to_endpoint(&self.dialers, &daemon), entry)
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

    /// `SignalTask`: delivers a signal by name.
    pub async fn signal(&self, task_id: &str, signal: &str) -> Result<(), TaskError> {
        let task = self.task(task_id)?;
        let request = pb::SignalExecutionRequest {
            session_id: task.state.session_id.clone(),
            execution_id: task.state.execution_id.clone(),
            signal: signal.to_owned(),
        };
        let link = &task.session.link;
        link.unary(
            request,
            |mut c, r| async move { c.signal_execution(r).await },
        )
        .await
        .map(drop)
        .map_err(|e| match e.code() {
            tonic::Code::NotFound => TaskError::NotFound(format!("task {task_id:?}: {e}")),
            tonic::Code::InvalidArgument => TaskError::InvalidConfig(e.to_string()),
            tonic::Code::FailedPrecondition => {
                TaskError::Precondition(format!("task {task_id:?}: {e}"))
            }
            _ => daemon_error(&format!("signalling task {task_id:?}"), link.target(), &e),
        })
    }

    /// `InspectTask`.
    pub fn inspect(&self, task_id: &str) -> Result<TaskSnapshot, TaskError> {
        let task = self.task(task_id)?;
        Ok(TaskSnapshot {
            id: task.id.clone(),
            name: task.name.clone(),
            started_at: task.started_at,
            outcome: task.outcome(),
        })
    }

    /// `TaskStats`: a sample now and every `interval` until the task ends
    /// (or the daemon stops answering, which ends the stream; Nomad calls
    /// again). Fails at once for unknown tasks.
    pub fn stats(
        &self,
        task_id: &str,
        interval: Duration,
    ) -> Result<impl Stream<Item = ResourceSample> + Send + 'static, TaskError> {
        let task = self.task(task_id)?;
        let interval = interval.max(Duration::from_millis(100));
        let state = (task, stats::CpuRate::since(Instant::now()), true);
        let clock = self.host.clock.clone();
        let stream = futures::stream::unfold(state, move |(task, mut rate, first)| {
            let clock = clock.clone();
            async move {
                if !first {
                    let mut exit = task.exit.clone();
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(interval) => {}
                        _ = exit.wait_for(Option::is_some) => return None,
                    }
                } else {
                    rate = stats::CpuRate::since(task.started_instant);
                }
                if task.outcome().is_some() {
                    return None;
                }
                let request = pb::GetExecutionMetricsRequest {
                    session_id: task.state.session_id.clone(),
                    execution_id: task.state.execution_id.clone(),
                };
                let metrics = task
                    .session
                    .link
                    .unary(request, |mut c, r| async move {
                        c.get_execution_metrics(r).await
                    })
                    .await;
                match metrics {
                    Ok(response) => {
                        let sample =
                            rate.sample(&response.metrics.unwrap_or_default(), clock.now());
                        Some((sample, (task, rate, false)))
                    }
                    Err(e) => {
                        tracing::debug!(task_id = %task.id, error = %e, "metrics unavailable; ending the stats stream");
                        None
                    }
                }
            }
        });
        Ok(stream)
    }

    /// Ids of every task in the table.
    pub fn task_ids(&self) -> Vec<String> {
        self.table().keys().cloned().collect()
    }

    /// The alloc id and name of a task (for events).
    pub fn task_identity(&self, task_id: &str) -> Option<(String, String)> {
        self.table()
            .get(task_id)
            .map(|t| (t.alloc_id.clone(), t.name.clone()))
    }
}

/// `CancelExecution` of a task's execution.
async fn cancel(task: &Task, signal: &str, grace: Duration) -> Result<(), CallError> {
    cancel_execution(
        &task.session.link,
        &task.state.session_id,
        &task.state.execution_id,
        signal,
        grace,
    )
    .await
}

/// `CancelExecution`: `signal` now, SIGKILL after `grace`.
/// Deadline of one `CancelExecution` call. The daemon answers it at once
/// (it signals and returns; the program ends later), so an unanswered
/// cancel means a dead connection, most often one left over from a
/// partition that has already healed. A short deadline retires it sooner,
/// which also reopens the streams on it, so the stop goes out again and its
/// result comes back well inside `kill_timeout` + 10 s (found by the
/// simulation: random-faults seeds 2000255 and 2000371).
const CANCEL_CALL_TIMEOUT: Duration = Duration::from_secs(3);

async fn cancel_execution(
    link: &DaemonLink,
    session_id: &str,
    execution_id: &str,
    signal: &str,
    grace: Duration,
) -> Result<(), CallError> {
    let request = pb::CancelExecutionRequest {
        session_id: session_id.to_owned(),
        execution_id: execution_id.to_owned(),
        signal: signal.to_owned(),
        grace: Some(elide_proto::duration_to_proto(grace)),
    };
    link.unary_within(CANCEL_CALL_TIMEOUT, request, |mut c, r| async move {
        c.cancel_execution(r).await
    })
    .await
    .map(drop)
}

/// The daemon's `max_cancel_grace`, if it says.
async fn max_cancel_grace(link: &DaemonLink) -> Option<Duration> {
    let capabilities = link
        .unary(pb::GetCapabilitiesRequest {}, |mut c, r| async move {
            c.get_capabilities(r).await
        })
        .await
        .ok()?;
    let grace = capabilities.limits?.max_cancel_grace?;
    Some(Duration::new(
        grace.seconds.max(0) as u64,
        grace.nanos.max(0) as u32,
    ))
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
