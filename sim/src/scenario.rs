//! Scenario files (`scenarios/*.toml`): the cluster's shape, the workload,
//! the fault schedule and what to expect, in a form a reader can check at
//! a glance. See `scenarios/README.md` for the format.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as text ("250ms", "3s", "2m").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        elide_proto::go_duration::parse(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not readable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for the format.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: toml::de::Error,
    },
    /// Valid TOML, inconsistent content.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// One scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (defaults to the file name).
    #[serde(default)]
    pub name: String,
    /// What it shows, in a sentence or two.
    pub about: String,
    /// Seeds `cargo test` runs it with.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Simulated-time limit: a run still busy then has wedged.
    #[serde(default = "default_limit")]
    pub limit: Span,
    /// The cluster.
    #[serde(default)]
    pub cluster: Cluster,
    /// Limits of every daemon that differ from the defaults.
    #[serde(default)]
    pub daemon: DaemonLimits,
    /// The workload, group by group.
    #[serde(default)]
    pub tasks: Vec<TaskGroup>,
    /// Faults at fixed times.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Faults drawn from the seed.
    #[serde(default)]
    pub random_faults: Option<RandomFaults>,
    /// What a run must show beyond the invariants that always hold.
    #[serde(default)]
    pub expect: Expect,
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

fn default_limit() -> Span {
    Span(Duration::from_secs(1800))
}

/// The cluster's shape: `clients` Nomad clients, each with its plugin and
/// its own daemon (one daemon per client, as deployed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Number of clients.
    #[serde(default = "one")]
    pub clients: u32,
    /// The plugin's `status_mode`.
    #[serde(default = "auto")]
    pub status_mode: String,
    /// The plugin's `poll_interval`.
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// Whether the daemons serve `WatchSession`.
    #[serde(default = "yes")]
    pub daemon_watch: bool,
    /// Whether the daemons' `WatchSession` sends only events after
    /// `after_seq` even after the gap for a cursor from another log (the
    /// contract's letter; the reference daemon replays its new log then).
    #[serde(default)]
    pub strict_after_seq: bool,
    /// The plugin's `session_config.idle_timeout`.
    #[serde(default = "default_idle")]
    pub idle_timeout: String,
    /// Message latency on every link, `[min, max]`.
    #[serde(default = "default_latency")]
    pub latency: [Span; 2],
    /// The simulation's time step: each step runs every host this long
    /// and delivers the messages due. turmoil's cost is per host per step,
    /// so a scale scenario that judges outcomes rather than millisecond
    /// ordering may take a coarser step. From [`MIN_TICK`] to [`MAX_TICK`].
    #[serde(default = "default_tick")]
    pub tick: Span,
    /// The `collection_interval` each agent asks `TaskStats` for, for
    /// every running task, as Nomad's stats hook does (Nomad's default
    /// `collection_interval` is 1 s). Unset: no `TaskStats` calls.
    #[serde(default)]
    pub stats_interval: Option<Span>,
    /// How long the agent's wait path takes to call `RecoverTask` on a
    /// restarted plugin after its kill path's `StopTask` was answered (a
    /// Nomad client restoring many allocations). Unset: right after.
    #[serde(default)]
    pub recover_delay: Option<Span>,
}

/// The finest time step (and the default).
pub const MIN_TICK: Duration = Duration::from_millis(1);
/// The coarsest time step a scenario may take: stop grace periods, poll
/// intervals and `results_within` bounds are all well above it.
pub const MAX_TICK: Duration = Duration::from_millis(10);

fn default_tick() -> Span {
    Span(MIN_TICK)
}

fn one() -> u32 {
    1
}
fn auto() -> String {
    "auto".into()
}
fn yes() -> bool {
    true
}
fn default_idle() -> String {
    "1h".into()
}
fn default_latency() -> [Span; 2] {
    [
        Span(Duration::from_millis(1)),
        Span(Duration::from_millis(5)),
    ]
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            clients: 1,
            status_mode: auto(),
            poll_interval: None,
            daemon_watch: true,
            strict_after_seq: false,
            idle_timeout: default_idle(),
            latency: default_latency(),
            tick: default_tick(),
            stats_interval: None,
            recover_delay: None,
        }
    }
}

/// Daemon limits a scenario sets (an operator's `elide-daemon` flags);
/// unset ones keep the daemon's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonLimits {
    /// `max_cancel_grace`: the longest stop grace the daemon accepts.
    #[serde(default)]
    pub max_cancel_grace: Option<Span>,
    /// `output_retention_bytes_per_stream`.
    #[serde(default)]
    pub output_retention_bytes: Option<u64>,
    /// `max_output_chunk_bytes`: the largest chunk of a `StreamOutput`.
    #[serde(default)]
    pub output_chunk_bytes: Option<u32>,
    /// `max_events_retained_per_session`: fewer means watchers that fall
    /// behind get a `gap` and must re-list.
    #[serde(default)]
    pub max_events_retained: Option<u32>,
    /// `max_retained_executions_per_session`: finished executions beyond
    /// it are forgotten, oldest first.
    #[serde(default)]
    pub max_retained_executions: Option<u32>,
    /// `max_running_executions`: programs running at once.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// `max_queued_executions`: accepted executions waiting for a run slot;
    /// beyond it `StartExecution` is refused (`RESOURCE_EXHAUSTED`).
    #[serde(default)]
    pub max_queued: Option<u32>,
    /// How memory limits are met: `kernel` (a memory cgroup: the kernel's
    /// OOM kill, the default) or `sampled` (no memory cgroup: the daemon
    /// samples resident memory and kills a program over its limit).
    #[serde(default)]
    pub memory_enforcement: MemoryEnforcement,
}

/// [`DaemonLimits::memory_enforcement`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryEnforcement {
    /// A memory cgroup per execution.
    #[default]
    Kernel,
    /// The daemon's sampler.
    Sampled,
}

impl DaemonLimits {
    /// The scripted runtime as the daemon's host provides it.
    pub fn runtime(&self) -> elide_daemon::ScriptedRuntime {
        match self.memory_enforcement {
            MemoryEnforcement::Kernel => elide_daemon::ScriptedRuntime::default(),
            MemoryEnforcement::Sampled => elide_daemon::ScriptedRuntime::sampling_memory(),
        }
    }

    /// The daemon's limits with these applied.
    pub fn apply(&self, mut limits: elide_daemon::Limits) -> elide_daemon::Limits {
        if let Some(grace) = self.max_cancel_grace {
            limits.max_cancel_grace = grace.0;
        }
        if let Some(bytes) = self.output_retention_bytes {
            limits.output_retention_bytes_per_stream = bytes;
        }
        if let Some(bytes) = self.output_chunk_bytes {
            limits.max_output_chunk_bytes = bytes;
        }
        if let Some(events) = self.max_events_retained {
            limits.max_events_retained_per_session = events;
        }
        if let Some(running) = self.max_running {
            limits.max_running_executions = running;
        }
        if let Some(queued) = self.max_queued {
            limits.max_queued_executions = queued;
        }
        if let Some(executions) = self.max_retained_executions {
            limits.max_retained_executions_per_session = executions;
        }
        limits
    }
}

/// What Nomad should make of a group's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskExpect {
    /// They run (the invariants say how they may end).
    #[default]
    Run,
    /// `StartTask` refuses them as misconfigured; nothing runs.
    Rejected,
}

/// A group of identical tasks (`{i}` in the program is replaced by the
/// task's index in the group, so outputs differ).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGroup {
    /// Task name.
    pub name: String,
    /// How many.
    #[serde(default = "one")]
    pub count: u32,
    /// When the first starts.
    #[serde(default)]
    pub start: Span,
    /// Starts are drawn uniformly from `[start, start + spread]`.
    #[serde(default)]
    pub spread: Span,
    /// The snippet, in the scripted runtime's language.
    pub program: String,
    /// Pads the snippet with `#` comment lines to at least this many bytes
    /// (large snippets; the daemon's default limit is 1 MiB).
    #[serde(default)]
    pub padding: usize,
    /// For `expect = "rejected"`: text Nomad's refusal must contain (what
    /// was wrong, e.g. the field).
    #[serde(default)]
    pub refusal: Option<String>,
    /// More task `config` attributes (HCL), e.g. `language = "cobol"`.
    #[serde(default)]
    pub config: String,
    /// `StopTask` this long after the start, if still running.
    #[serde(default)]
    pub stop_after: Option<Span>,
    /// The job's `kill_timeout`.
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: Span,
    /// The job's `kill_signal` (empty: the driver's default).
    #[serde(default)]
    pub kill_signal: String,
    /// `DestroyTask(force = true)` this long after the start, without a
    /// stop first (Nomad does so when an allocation is garbage-collected
    /// or a kill fails); the program must be killed and forgotten.
    #[serde(default)]
    pub destroy_after: Option<Span>,
    /// What should happen to them.
    #[serde(default)]
    pub expect: TaskExpect,
    /// The exit code Nomad must be told (a clean result), if it is known
    /// in advance (e.g. a trap's code after a stop).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal Nomad must be told (a clean result), if known in advance.
    #[serde(default)]
    pub signal: Option<i32>,
    /// This group's bound on result delay, in place of
    /// `[expect] results_within` (e.g. tasks that run long after the faults
    /// must be as prompt as in a healthy cluster again).
    #[serde(default)]
    pub results_within: Option<Span>,
    /// The Nomad agent crashes after receiving each task's result, before
    /// persisting it; restarted, it recovers the task and waits again (the
    /// second answer must match the first).
    #[serde(default)]
    pub agent_crash_after_result: bool,
    /// The task's `resources { memory }`, MiB.
    #[serde(default = "default_memory")]
    pub memory: i64,
    /// The task's `resources { memory_max }`, MiB (0: unset).
    #[serde(default)]
    pub memory_max: i64,
    /// `SignalTask` calls Nomad makes (`nomad alloc signal`), each at a
    /// time after the task's start, one after another (a call waits for
    /// the answer to the one before).
    #[serde(default)]
    pub signals: Vec<SignalSpec>,
}

fn default_memory() -> i64 {
    256
}

/// One `SignalTask` call of a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    /// How long after the task's start.
    pub at: Span,
    /// The signal's name (`SIGUSR1`, `SIGHUP`, ...).
    pub signal: String,
}

fn default_kill_timeout() -> Span {
    Span(Duration::from_secs(5))
}

/// Kinds of fault. Each hits one client's machines for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Cut the plugin–daemon link (both ways), repaired after `for`.
    Partition,
    /// Hold every message on the plugin–daemon link, released after `for`.
    Hold,
    /// Messages on the plugin–daemon link take up to `latency`.
    Slow,
    /// The daemon host crashes; it reboots after `for` (never without).
    CrashDaemon,
    /// The plugin crashes; Nomad restarts it after `for`.
    CrashPlugin,
    /// The whole client (Nomad agent and plugin) crashes; it restarts
    /// after `for`, or never: then its session must expire.
    CrashClient,
    /// The daemon host crashes and comes back after `for` with an empty
    /// disk (a reinstalled machine, a state directory on tmpfs): every
    /// session and execution it had is unknown to it afterwards.
    WipeDaemon,
    /// Logmon stops reading the log FIFOs (of `task`'s tasks, or of every
    /// task on the client) for `for`, then reads on.
    StallLogs,
    /// Logmon closes those FIFOs (it exits) and opens them again after
    /// `for` (it was restarted).
    DropLogReader,
    /// For `for`, the daemon breaks off every `StreamOutput` stream it
    /// serves with `UNAVAILABLE` after the stream's first message (a daemon
    /// shedding load, a proxy resetting streams); it stays up and its
    /// programs run on, so no output may be lost.
    BreakOutputStreams,
    /// For `for`, the daemon answers every `CancelExecution` and
    /// `DeleteExecution` with `INTERNAL` (a daemon whose state store fails,
    /// say on a full disk); it stays up and its programs run on. A failed
    /// stop goes back to Nomad, which retries it on its own schedule, and
    /// the driver keeps the stop, and a destroyed task's delete, up in the
    /// background.
    FailStops,
    /// For `for`, the daemon refuses every `CancelExecution` and
    /// `DeleteExecution` with `PERMISSION_DENIED` (an authorization policy
    /// that lets this client start executions but not stop them, changed
    /// by the daemon's operator and changed back): a refusal for good,
    /// which the driver reports and does not repeat on its own; a stop
    /// goes again when Nomad retries it.
    DenyStops,
    /// For `for`, the daemon carries out every `ExecuteSnippet` but its
    /// answer is lost (the connection resets before it goes out: the
    /// caller sees `UNAVAILABLE`). Nomad retries the failed `StartTask`;
    /// the program must not run twice.
    LoseStartAnswers,
}

impl FaultKind {
    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Hold => "hold",
            FaultKind::Slow => "slow",
            FaultKind::CrashDaemon => "crash_daemon",
            FaultKind::CrashPlugin => "crash_plugin",
            FaultKind::CrashClient => "crash_client",
            FaultKind::WipeDaemon => "wipe_daemon",
            FaultKind::StallLogs => "stall_logs",
            FaultKind::DropLogReader => "drop_log_reader",
            FaultKind::BreakOutputStreams => "break_output_streams",
            FaultKind::FailStops => "fail_stops",
            FaultKind::DenyStops => "deny_stops",
            FaultKind::LoseStartAnswers => "lose_start_answers",
        }
    }

    /// Whether it can make a call fail, be slow or need a new connection
    /// (the log-reader faults and broken output streams cannot).
    pub fn disturbs_calls(self) -> bool {
        !self.only_logs() && self != FaultKind::BreakOutputStreams
    }

    /// Whether it hits only Nomad's log readers (not the plugin, the
    /// daemon or the link between them).
    pub fn only_logs(self) -> bool {
        matches!(self, FaultKind::StallLogs | FaultKind::DropLogReader)
    }
}

/// A fault at a fixed time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When it starts.
    pub at: Span,
    /// What.
    pub kind: FaultKind,
    /// Which client (1-based).
    #[serde(default = "one")]
    pub client: u32,
    /// How long it lasts; required except for `crash_client`.
    #[serde(default, rename = "for")]
    pub lasts: Option<Span>,
    /// Extra latency of `slow`.
    #[serde(default)]
    pub latency: Option<Span>,
    /// The task (group name) whose log readers `stall_logs` and
    /// `drop_log_reader` hit; every task on the client when unset.
    #[serde(default)]
    pub task: Option<String>,
}

/// Faults drawn from the seed: `count` faults of the given kinds, at
/// times in `[from, to]`, each lasting up to `max_for`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// How many.
    pub count: u32,
    /// Earliest start.
    pub from: Span,
    /// Latest start.
    pub to: Span,
    /// Longest duration.
    pub max_for: Span,
    /// Kinds to draw from (`crash_client` always comes back).
    pub kinds: Vec<FaultKind>,
}

/// Expectations beyond the invariants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Whether explicit failures (e.g. "daemon restarted") may be
    /// reported; when false every task must end with its program's real
    /// exit.
    #[serde(default)]
    pub failures_allowed: bool,
    /// Whether the daemon may report output it no longer had.
    #[serde(default)]
    pub truncation_allowed: bool,
    /// How soon every result must reach Nomad: after the program's exit,
    /// or after the end of the last fault on its client if that is later
    /// (a program that died with its daemon counts from there).
    #[serde(default)]
    pub results_within: Option<Span>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut scenario = Scenario::parse(&shown, &text)?;
        if scenario.name.is_empty() {
            scenario.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(scenario)
    }

    /// Parses and checks scenario text (`path` is for messages).
    pub fn parse(path: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |problem: String| ScenarioError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if scenario.cluster.clients == 0 {
            return Err(invalid("cluster.clients must be at least 1".into()));
        }
        let tick = scenario.cluster.tick.0;
        if !(MIN_TICK..=MAX_TICK).contains(&tick) {
            return Err(invalid(format!(
                "cluster.tick must be from {MIN_TICK:?} to {MAX_TICK:?}, not {tick:?}"
            )));
        }
        if scenario.tasks.is_empty() {
            return Err(invalid("no [[tasks]]".into()));
        }
        scenario
            .daemon
            .apply(elide_daemon::Limits::default())
            .validate()
            .map_err(|problem| invalid(format!("[daemon]: {problem}")))?;
        for group in &scenario.tasks {
            let kill_signal = match group.kill_signal.as_str() {
                "" => "SIGINT",
                named => named,
            };
            for call in &group.signals {
                let known = signal_number(&call.signal);
                if known.is_none() || [Some(9), signal_number(kill_signal)].contains(&known) {
                    return Err(invalid(format!(
                        "tasks {:?}: signals: {:?} at {:?} is not a signal the simulation can tell from a stop \
                         (SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM or SIGINT, other than the kill_signal {kill_signal})",
                        group.name, call.signal, call.at.0
                    )));
                }
            }
        }
        for fault in &scenario.faults {
            if fault.client == 0 || fault.client > scenario.cluster.clients {
                return Err(invalid(format!(
                    "fault at {:?}: client {} does not exist (1..={})",
                    fault.at.0, fault.client, scenario.cluster.clients
                )));
            }
            if let Some(task) = &fault.task {
                if !fault.kind.only_logs() {
                    return Err(invalid(format!(
                        "fault {} at {:?}: `task` is only for stall_logs and drop_log_reader",
                        fault.kind.name(),
                        fault.at.0
                    )));
                }
                if !scenario.tasks.iter().any(|g| &g.name == task) {
                    return Err(invalid(format!(
                        "fault {} at {:?}: no task {task:?}",
                        fault.kind.name(),
                        fault.at.0
                    )));
                }
            }
            if fault.lasts.is_none() && fault.kind != FaultKind::CrashClient {
                return Err(invalid(format!(
                    "fault {} at {:?} needs `for`",
                    fault.kind.name(),
                    fault.at.0
                )));
            }
        }
        Ok(scenario)
    }
}

/// Linux signal numbers of the names a job may give as `kill_signal` or
/// a `SignalTask` may carry (a table of our own, not the driver's or the
/// daemon's parser).
pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: &str = "[[tasks]]\nname = \"t\"\nprogram = \"exit 0\"\n";

    #[test]
    fn a_tick_outside_its_range_is_refused_naming_the_key() {
        for tick in ["0s", "11ms"] {
            let text = format!("about = \"x\"\n[cluster]\ntick = \"{tick}\"\n{TASKS}");
            let err = Scenario::parse("s.toml", &text).unwrap_err().to_string();
            assert!(
                err.contains("cluster.tick must be from 1ms to 10ms"),
                "{err}"
            );
        }
        let text = format!("about = \"x\"\n[cluster]\ntick = \"5ms\"\n{TASKS}");
        let scenario = Scenario::parse("s.toml", &text).unwrap();
        assert_eq!(scenario.cluster.tick.0, Duration::from_millis(5));
        let text = format!("about = \"x\"\n{TASKS}");
        assert_eq!(
            Scenario::parse("s.toml", &text).unwrap().cluster.tick.0,
            MIN_TICK
        );
    }

    fn with_signals(kill_signal: &str, signal: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            "about = \"x\"\n[[tasks]]\nname = \"t\"\nprogram = \"sleep 1s\"\nkill_signal = \"{kill_signal}\"\nsignals = [{{ at = \"1s\", signal = \"{signal}\" }}]\n"
        );
        Scenario::parse("test.toml", &text)
    }

    #[test]
    fn signals_must_differ_from_the_stop_signals() {
        assert_eq!(
            with_signals("SIGTERM", "SIGUSR1").unwrap().tasks[0]
                .signals
                .len(),
            1
        );
        for (kill_signal, signal) in [
            ("SIGTERM", "SIGTERM"),
            ("", "SIGINT"),
            ("", "SIGKILL"),
            ("", "SIGWHAT"),
        ] {
            let problem = with_signals(kill_signal, signal).unwrap_err().to_string();
            assert!(
                problem.contains(&format!("signals: \"{signal}\""))
                    && problem.contains("tasks \"t\""),
                "{problem}"
            );
        }
    }
}
