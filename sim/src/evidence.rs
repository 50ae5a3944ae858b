//! What a finished run leaves for the invariants to judge: the scenario,
//! its plan, what the agents saw, what the programs really did, and what
//! the daemons held at the end. Built by [`crate::world`], read by
//! [`crate::invariants`]; neither depends on the other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::logs::LogBook;
use crate::observe::Observations;
use crate::plan::Plan;
use crate::scenario::Scenario;
use crate::truth::{GroundTruth, ProgramRun};

/// Everything a finished run left for the invariants.
pub struct Evidence<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// Its plan for this seed.
    pub plan: &'a Plan,
    /// What the agents saw.
    pub seen: &'a Observations,
    /// What the programs did.
    pub truth: &'a GroundTruth,
    /// What logmon received.
    pub logs: &'a BTreeMap<u32, LogBook>,
    /// Per client: its daemon's boot count, and whether it runs at the end.
    pub daemons: BTreeMap<u32, (u64, bool)>,
    /// Per client: what its daemon held at the end (`None`: not
    /// reachable).
    pub held: BTreeMap<u32, Option<Held>>,
    /// Per client: every connection its plugins dialled to the daemon.
    pub dials: BTreeMap<u32, Vec<crate::net::Dial>>,
    /// Per client: the plugin's files at the end (path, contents).
    pub files: BTreeMap<u32, BTreeMap<std::path::PathBuf, Vec<u8>>>,
    /// Per client: the requests its daemon served, by method.
    pub daemon_requests: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Per client: the calls its daemon refused on a fault's orders.
    pub refusals: BTreeMap<u32, Vec<crate::daemon_wire::Refusal>>,
    /// Per client: the executions its daemon answered a start with
    /// `created = false` for.
    pub existing_starts: BTreeMap<u32, BTreeSet<String>>,
    /// Per client: when its daemon first answered a delete of each
    /// execution with OK.
    pub deletes: BTreeMap<u32, BTreeMap<String, Duration>>,
    /// What the driver logged at `INFO` or above, in order.
    pub operator_log: &'a [LogLine],
    /// Per client: when each plugin process started.
    pub plugin_boots: BTreeMap<u32, Vec<std::time::Duration>>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
}

/// What a daemon held at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Its sessions.
    pub sessions: Vec<String>,
    /// The executions of all of them.
    pub executions: BTreeSet<String>,
}

/// One line the driver logged at `INFO` or above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When (simulated time).
    pub at: Duration,
    /// Its message.
    pub message: String,
    /// Its `task_id` field, if it has one.
    pub task_id: Option<String>,
}

/// Completion latency: the program's exit to Nomad's `WaitTask` result.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Samples, sorted.
    pub samples: Vec<Duration>,
}

impl Latency {
    /// The `q` quantile (0..=1), zero without samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.samples.len() - 1) as f64 * q).round() as usize;
        self.samples[i]
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// The task, if it is about one.
    pub task: Option<String>,
    /// What was seen.
    pub detail: String,
}

impl Violation {
    /// A broken `rule`, about `task` if it is about one.
    pub fn new(rule: &'static str, task: Option<&str>, detail: String) -> Self {
        Violation {
            rule,
            task: task.map(str::to_owned),
            detail,
        }
    }

    /// A broken `rule` about `task`.
    pub fn of_task(rule: &'static str, task: &str, detail: String) -> Self {
        Violation {
            rule,
            task: Some(task.to_owned()),
            detail,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.task {
            Some(task) => write!(f, "[{}] {task}: {}", self.rule, self.detail),
            None => write!(f, "[{}] {}", self.rule, self.detail),
        }
    }
}

/// How long after its program's end a daemon crash may still take the
/// exit with it (the daemon writes it to its store as it sees it).
pub const EXIT_PERSIST_SLACK: Duration = Duration::from_millis(100);

/// A program's real exit as (exit code, signal), if it ended.
pub fn exit_of(run: &ProgramRun) -> Option<(i32, i32)> {
    run.exit.map(|exit| match exit {
        elide_daemon::ExitInfo::Code(code) => (code, 0),
        elide_daemon::ExitInfo::Signal(signal) => (0, signal as i32),
    })
}
