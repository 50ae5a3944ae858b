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

mod cancel;
mod destroy;
mod detach;
mod driver_state;
mod error;
mod events;
mod exec;
mod exit;
mod intents;
pub(crate) mod log_lines;
mod output;
mod pending_stops;
mod recover;
mod request;
mod start;
mod stats;
mod stats_stream;
mod status_feed;
mod stop;
mod task_user;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::daemon_link::identity;
use crate::daemon_link::{DaemonLink, DialerFactory};
use crate::host::Host;
use crate::plugin_config::{DaemonEndpoint, PluginConfig};

pub use detach::Detached;
pub use driver_state::{DriverState, DRIVER_STATE_VERSION};
pub use error::TaskError;
use error::{daemon_error, unknown_task};
pub use events::{TaskEvent, TaskEventHub, NOT_CONFIGURED};
pub use exec::ExecError;
pub use exit::ExitOutcome;
pub use stats::{NodeCompute, ResourceSample};
pub use status_feed::{Observed, StatusHub};

use intents::{keep_stopping, DeleteJournal, StopFile, StopRequest};

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
/// First delay between attempts to delete a destroyed task's execution,
/// or to deliver a stop in the background.
pub const REAP_FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between attempts to delete a destroyed task's execution,
/// or to deliver a stop in the background.
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
    hub: Arc<StatusHub>,
    _feed: AbortOnDrop<()>,
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
    state: DriverState,
    session: Arc<SessionContext>,
    started_at: SystemTime,
    started_instant: Instant,
    exit: watch::Receiver<Option<ExitOutcome>>,
    _supervisor: AbortOnDrop<()>,
    /// Keeps asking the daemon to stop the program while it cannot take
    /// the stop ([`keep_stopping`]), with the stop it delivers; ends with
    /// the task.
    stopper: Mutex<Option<(StopRequest, AbortOnDrop<()>)>>,
    /// Its output offsets (shared with its forwarder).
    offsets_file: output::OffsetsFile,
    /// Whether a `WaitTask` was answered (for the test-only fault switch).
    #[cfg(feature = "fault-switch")]
    answered: std::sync::atomic::AtomicBool,
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
    /// has exited. One still retrying the same stop goes on at its
    /// back-off (Nomad retries a failed `StopTask` itself, and a stopper
    /// started afresh each time would ask at the first delay again); one
    /// with another stop is replaced.
    fn keep_stopping(&self, files: &Arc<dyn crate::host::StateFiles>, stop: StopRequest) {
        self.stop_file(files).write(&stop);
        let mut slot = self.stopper.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((running, stopper)) = slot.as_ref() {
            if *running == stop && !stopper.0.is_finished() {
                return;
            }
        }
        let stopper = tokio::spawn(keep_stopping(
            self.id.clone(),
            self.session.link.clone(),
            self.state.session_id.clone(),
            self.state.execution_id.clone(),
            stop.clone(),
            self.exit.clone(),
        ));
        *slot = Some((stop, AbortOnDrop(stopper)));
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
    /// One link (one connection) per daemon endpoint, shared by its
    /// sessions, the stops and the deletes of tasks not held: a thousand
    /// stops after a restart must not dial a thousand connections.
    links: Mutex<BTreeMap<String, DaemonLink>>,
    tasks: Mutex<BTreeMap<String, Arc<Task>>>,
    events: TaskEventHub,
    /// Stops of tasks not (yet) in the table that could not be delivered:
    /// applied if the task is recovered. Keyed by task id, with the order of
    /// arrival for the size limit.
    pending_stops: Mutex<pending_stops::PendingStops>,
    /// Deletes the daemon has not confirmed, kept across plugin restarts.
    journal: Arc<DeleteJournal>,
    /// Executions a [`reap`] is under way for (one each).
    reaping: Arc<Mutex<BTreeSet<String>>>,
    /// Raised by `Driver.Shutdown` ([`TaskManager::detach`]).
    detach: watch::Sender<bool>,
    /// Cloned into every task supervisor; `None` once detached.
    alive: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
    /// Ends (`recv` gives `None`) when every clone of `alive` is gone.
    alive_receiver: Mutex<Option<tokio::sync::mpsc::Receiver<()>>>,
}

impl TaskManager {
    /// An empty table publishing task events on `events`, reaching daemons
    /// through `dialers`, on `host`.
    pub fn new(events: TaskEventHub, dialers: DialerFactory, host: Host) -> Self {
        let (alive, alive_receiver) = tokio::sync::mpsc::channel(1);
        TaskManager {
            dialers,
            contexts: tokio::sync::Mutex::default(),
            links: Mutex::default(),
            tasks: Mutex::default(),
            events,
            pending_stops: Mutex::new(pending_stops::PendingStops::new(MAX_PENDING_STOPS)),
            journal: Arc::new(DeleteJournal::new(host.files.clone())),
            reaping: Arc::default(),
            host,
            detach: watch::Sender::new(false),
            alive: Mutex::new(Some(alive)),
            alive_receiver: Mutex::new(Some(alive_receiver)),
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

    /// The link to `daemon`, made on first use.
    pub(super) fn link_to(&self, daemon: &DaemonEndpoint) -> DaemonLink {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(daemon.to_string())
            .or_insert_with(|| DaemonLink::to_endpoint(&self.dialers, daemon))
            .clone()
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
        let link = self.link_to(daemon);
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
            hub,
            _feed: AbortOnDrop(feed),
        });
        contexts.insert(key, context.clone());
        context
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

    /// `WaitTask`: the task's exit, once it exited and its output is
    /// complete. Any number of concurrent callers.
    pub async fn wait(&self, task_id: &str) -> Result<ExitOutcome, TaskError> {
        let task = self.task(task_id)?;
        let mut exit = task.exit.clone();
        let outcome = match exit.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_default(),
            // The task was destroyed while we waited.
            Err(_) => exit::lost("the task was destroyed", self.host.clock.now()),
        };
        #[cfg(feature = "fault-switch")]
        if let Some(broken) = self.broken_wait_answer(&task) {
            return Ok(broken);
        }
        Ok(outcome)
    }

    /// The test-only fault switch's wrong `WaitTask` answers (compiled
    /// only with the `fault-switch` feature, so left out of mutation
    /// testing, see `.cargo/mutants.toml`).
    #[cfg(feature = "fault-switch")]
    fn broken_wait_answer(&self, task: &Task) -> Option<ExitOutcome> {
        let answered_before = task
            .answered
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        (crate::broken!(ReportsEverythingLost)
            || (answered_before && crate::broken!(AnswersWaitTaskTwice)))
        .then(|| exit::lost("broken on purpose", self.host.clock.now()))
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
        let signalled = if crate::broken!(RetriesSlowSignal) {
            signal_twice_if_slow(link, request).await
        } else {
            link.unary(
                request,
                |mut c, r| async move { c.signal_execution(r).await },
            )
            .await
        };
        signalled.map(drop).map_err(|e| match e.code() {
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
}

/// The test-only breakage `RetriesSlowSignal` (see `fault_switch.rs`): a
/// second request when the first is not answered within a second, the
/// first left running.
async fn signal_twice_if_slow(
    link: &crate::daemon_link::DaemonLink,
    request: pb::SignalExecutionRequest,
) -> Result<pb::SignalExecutionResponse, crate::daemon_link::CallError> {
    let first = link.unary(request.clone(), |mut c, r| async move {
        c.signal_execution(r).await
    });
    tokio::pin!(first);
    match tokio::time::timeout(Duration::from_secs(1), &mut first).await {
        Ok(answer) => answer,
        Err(_) => {
            let again = link.unary(
                request,
                |mut c, r| async move { c.signal_execution(r).await },
            );
            tokio::join!(first, again).0
        }
    }
}
