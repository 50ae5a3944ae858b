//! What the fake Nomad clients saw, task by task: the record the
//! invariants read. Lives outside the hosts, like an observer's notebook.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A `WaitTask` result as Nomad got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    /// When (simulated time).
    pub at: Duration,
    /// Exit code.
    pub exit_code: i32,
    /// Terminating signal number.
    pub signal: i32,
    /// `ExitResult.oom_killed`.
    pub oom_killed: bool,
    /// The driver's error; empty for a clean run.
    pub err: String,
    /// Whether the agent wrote it to its state database (an agent crash
    /// between receiving and persisting leaves it unpersisted; the agent
    /// then waits again).
    pub persisted: bool,
}

/// One `InspectTask` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The wall clock (the plugin's) when it was asked.
    pub asked_at: std::time::SystemTime,
    /// `TaskStatus.state` (`TaskState`: 1 running, 2 exited).
    pub state: i32,
    /// `TaskStatus.result`: exit code, signal, OOM-killed.
    pub exit: (i32, i32, bool),
    /// `TaskStatus.started_at`.
    pub started_at: Option<std::time::SystemTime>,
    /// `TaskStatus.completed_at`.
    pub completed_at: Option<std::time::SystemTime>,
}

/// Everything seen of one task.
#[derive(Debug, Clone, Default)]
pub struct TaskSeen {
    /// `StartTask` calls made.
    pub start_calls: u32,
    /// When `StartTask` first succeeded.
    pub started_at: Option<Duration>,
    /// Why `StartTask` refused it for good.
    pub rejected: Option<String>,
    /// `StartTask` failures Nomad retries (recoverable): when, and the
    /// message.
    pub start_failures: Vec<(Duration, String)>,
    /// `StopTask` calls that failed: when, and the message.
    pub stop_failures: Vec<(Duration, String)>,
    /// `InspectTask` answers after the result.
    pub inspections: Vec<Inspection>,
    /// Every result received (exactly one persisted is right; any other
    /// must match it).
    pub results: Vec<TaskResult>,
    /// When `StopTask` was called, every time.
    pub stop_calls: Vec<Duration>,
    /// `DestroyTask` calls made (forced while running, or after the
    /// result).
    pub destroy_calls: u32,
    /// `RecoverTask` calls made.
    pub recover_calls: u32,
    /// When `DestroyTask` succeeded.
    pub destroyed_at: Option<Duration>,
    /// When a plugin last started or recovered it.
    pub attached_at: Option<Duration>,
    /// When a `DestroyTask` call (forced while running, or after the
    /// result) was first answered OK, and when that call was made.
    pub destroy_answered: Option<(Duration, Duration)>,
    /// When `DestroyTask(force)` was first called on it while it ran.
    pub force_destroyed_at: Option<Duration>,
    /// Driver task events.
    pub events: Vec<String>,
    /// Output the driver reported lost because the daemon had discarded
    /// it: `(stream, from, to)` byte ranges.
    pub dropped: Vec<(String, u64, u64)>,
    /// Output the driver reported lost because Nomad's log reader took
    /// none of it in time (`reason = "log_reader_stalled"`), likewise.
    pub unread: Vec<(String, u64, u64)>,
    /// Protocol surprises (an error a real Nomad would not expect).
    pub surprises: Vec<String>,
    /// Every `TaskStats` sample received, in order.
    pub stats: Vec<StatsSeen>,
    /// Set when a `TaskStats` stream was still open (no end, no sample)
    /// this long after the result: the time the agent gave up on it.
    pub stats_left_open: Option<Duration>,
    /// Every `SignalTask` call, in order.
    pub signal_calls: Vec<SignalCall>,
}

impl TaskSeen {
    /// When `StopTask` was first called.
    pub fn stop_called_at(&self) -> Option<Duration> {
        self.stop_calls.first().copied()
    }
}

/// One `TaskStats` sample as the agent received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSeen {
    /// When it arrived (simulated time).
    pub at: Duration,
    /// The task id it names.
    pub task_id: String,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

/// One `SignalTask` call and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalCall {
    /// The signal's name.
    pub signal: String,
    /// When it was sent.
    pub sent_at: Duration,
    /// When it was answered (or failed); `None`: never (the agent
    /// crashed while it was under way).
    pub answered_at: Option<Duration>,
    /// `None`: OK (if answered); else the gRPC code and message.
    pub error: Option<(tonic::Code, String)>,
}

impl SignalCall {
    /// Whether the plugin answered OK.
    pub fn ok(&self) -> bool {
        self.answered_at.is_some() && self.error.is_none()
    }
}

/// The notebook.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<String, TaskSeen>,
    done_clients: BTreeSet<u32>,
    /// Per client, every fingerprint the agent received: (when, healthy).
    health: BTreeMap<u32, Vec<(Duration, bool)>>,
}

impl Observations {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Updates the record of `task_id`.
    pub fn task(&self, task_id: &str, f: impl FnOnce(&mut TaskSeen)) {
        f(self.lock().tasks.entry(task_id.to_owned()).or_default());
    }

    /// The record of `task_id`.
    pub fn seen(&self, task_id: &str) -> TaskSeen {
        self.lock().tasks.get(task_id).cloned().unwrap_or_default()
    }

    /// Marks `client`'s workload finished.
    pub fn client_done(&self, client: u32) {
        self.lock().done_clients.insert(client);
    }

    /// Notes a fingerprint `client`'s agent received at `at`.
    pub fn fingerprint(&self, client: u32, at: Duration, healthy: bool) {
        self.lock()
            .health
            .entry(client)
            .or_default()
            .push((at, healthy));
    }

    /// Every fingerprint `client`'s agent received, in order.
    pub fn fingerprints(&self, client: u32) -> Vec<(Duration, bool)> {
        self.lock().health.get(&client).cloned().unwrap_or_default()
    }

    /// Clients whose workload is finished.
    pub fn done_clients(&self) -> BTreeSet<u32> {
        self.lock().done_clients.clone()
    }
}
