//! A scenario turned into a concrete run for one seed: every task with
//! its ids, client and start time, and the fault schedule as timed actions
//! on hosts and links. Everything random is drawn here, from the seed.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::logs::ReaderAway;
use crate::scenario::{FaultKind, FaultSpec, Scenario, TaskExpect};

/// Port every daemon listens on.
pub const DAEMON_PORT: u16 = 7420;

/// Host name of client `n`'s Nomad agent.
pub fn nomad_host(client: u32) -> String {
    format!("nomad-{client}")
}

/// Host name of client `n`'s driver plugin.
pub fn plugin_host(client: u32) -> String {
    format!("plugin-{client}")
}

/// Host name of client `n`'s daemon.
pub fn daemon_host(client: u32) -> String {
    format!("daemon-{client}")
}

/// One task of the run.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    /// The client it is placed on (1-based).
    pub client: u32,
    /// Its group (the task name).
    pub group: String,
    /// Index in its group.
    pub index: u32,
    /// Nomad's task id (`<alloc>/<task>/<invocation>`).
    pub task_id: String,
    /// The allocation.
    pub alloc_id: String,
    /// The execution the driver must derive from the task id
    /// ([`expected_execution_id`]).
    pub execution_id: String,
    /// When Nomad starts it.
    pub start_at: Duration,
    /// The snippet.
    pub program: String,
    /// Extra task config (HCL).
    pub extra_config: String,
    /// `StopTask` this long after the start, if still running.
    pub stop_after: Option<Duration>,
    /// The job's `kill_timeout`.
    pub kill_timeout: Duration,
    /// The job's `kill_signal`.
    pub kill_signal: String,
    /// `DestroyTask(force)` this long after the start, if still running.
    pub destroy_after: Option<Duration>,
    /// What should happen.
    pub expect: TaskExpect,
    /// Text a refusal must contain.
    pub refusal: Option<String>,
    /// The exit code and signal Nomad must be told, when known in advance.
    pub expected_exit: Option<(i32, i32)>,
    /// The bound on its result's delay after the program's end (or the
    /// client's last fault), if any.
    pub results_within: Option<Duration>,
    /// The agent crashes after receiving the result, before persisting it.
    pub agent_crash_after_result: bool,
    /// `elide_opts.timeout` of its config, if it sets one.
    pub timeout: Option<Duration>,
    /// `resources { memory }`, MiB.
    pub memory_mb: i64,
    /// `resources { memory_max }`, MiB (0: unset).
    pub memory_max_mb: i64,
    /// `SignalTask` calls: (after the start, signal name), in time order.
    pub signals: Vec<(Duration, String)>,
    /// The interval the agent collects `TaskStats` at (`None`: it does not).
    pub stats_interval: Option<Duration>,
    /// The wait path's delay before `RecoverTask` after the kill path's
    /// `StopTask` on a restarted plugin (`cluster.recover_delay`).
    pub recover_delay: Duration,
}

/// `elide_opts { timeout = "…" }` of a task's extra config (HCL), read as
/// Nomad's jobspec would; `None` when unset or unreadable (the driver then
/// refuses the task, and the `rejections` rule judges that).
fn config_timeout(config: &str) -> Option<Duration> {
    let body: hcl::Body = hcl::parse(config).ok()?;
    let opts = body.blocks().find(|b| b.identifier() == "elide_opts")?;
    let timeout = opts.body().attributes().find(|a| a.key() == "timeout")?;
    match timeout.expr() {
        hcl::Expression::String(text) => elide_proto::go_duration::parse(text).ok(),
        _ => None,
    }
}

/// Longest execution id the daemon accepts.
const MAX_EXECUTION_ID_BYTES: usize = 128;

/// The execution id the driver must derive from Nomad's task id, written
/// here from the rule the driver documents (`daemon_link/identity.rs`), not
/// with its code: `/` becomes `.`, any other character outside
/// `[A-Za-z0-9._-]` becomes `_`; if that was lossy (or gave `""`, `.`,
/// `..`) or is longer than 128 bytes, it is cut to 111 bytes and `-` plus
/// the first 16 hex digits of the SHA-256 of the task id are appended.
pub fn expected_execution_id(task_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut lossy = matches!(task_id, "" | "." | "..");
    let mut id = String::with_capacity(task_id.len());
    for c in task_id.chars() {
        id.push(match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => {
                lossy = true;
                '_'
            }
        });
    }
    if lossy || id.len() > MAX_EXECUTION_ID_BYTES {
        let digest = Sha256::digest(task_id.as_bytes());
        id.truncate(MAX_EXECUTION_ID_BYTES - 17);
        id.push('-');
        id.push_str(&hex::encode(&digest[..8]));
    }
    id
}

impl TaskPlan {
    /// The allocation directory on the client.
    pub fn alloc_dir(&self) -> String {
        format!("/var/nomad/alloc/{}", self.alloc_id)
    }

    /// Nomad's stdout FIFO.
    pub fn stdout_path(&self) -> String {
        format!(
            "{}/alloc/logs/.{}.stdout.fifo",
            self.alloc_dir(),
            self.group
        )
    }

    /// Nomad's stderr FIFO.
    pub fn stderr_path(&self) -> String {
        format!(
            "{}/alloc/logs/.{}.stderr.fifo",
            self.alloc_dir(),
            self.group
        )
    }
}

/// One change to the simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cut both directions between two hosts.
    Partition(String, String),
    /// Undo [`Action::Partition`].
    Repair(String, String),
    /// Queue every message between two hosts.
    Hold(String, String),
    /// Deliver what [`Action::Hold`] queued.
    Release(String, String),
    /// Set the largest message latency between two hosts.
    Latency(String, String, Duration),
    /// Stop a host's software.
    Crash(String),
    /// (Re)start a host's software.
    Restart(String),
    /// Empty a (crashed) daemon host's disk.
    Wipe(String),
    /// Logmon of a client stops reading (or closes) the FIFOs of a task
    /// group (every group when `None`).
    ReaderAway(u32, Option<String>, ReaderAway),
    /// Undo [`Action::ReaderAway`].
    ReaderBack(u32, Option<String>, ReaderAway),
    /// A daemon host starts (`true`) or stops breaking off its output
    /// streams.
    BreakOutputStreams(String, bool),
    /// A daemon host starts (`true`) or stops losing its answers to starts.
    LoseStartAnswers(String, bool),
    /// A daemon host starts refusing its cancels and deletes with a code,
    /// or (`None`) takes them again.
    RefuseStops(String, Option<tonic::Code>),
}

impl Action {
    /// One line for the trace.
    pub fn describe(&self) -> String {
        match self {
            Action::Partition(a, b) => format!("partition {a} <-> {b}"),
            Action::Repair(a, b) => format!("repair {a} <-> {b}"),
            Action::Hold(a, b) => format!("hold {a} <-> {b}"),
            Action::Release(a, b) => format!("release {a} <-> {b}"),
            Action::Latency(a, b, d) => format!("latency {a} <-> {b} up to {d:?}"),
            Action::Crash(h) => format!("crash {h}"),
            Action::Restart(h) => format!("restart {h}"),
            Action::Wipe(h) => format!("wipe the disk of {h}"),
            Action::ReaderAway(client, group, away) => format!(
                "logmon of client {client} {} the FIFOs of {}",
                match away {
                    ReaderAway::Stalled => "stops reading",
                    ReaderAway::Gone => "closes",
                },
                group.as_deref().unwrap_or("every task")
            ),
            Action::BreakOutputStreams(h, true) => format!("{h} breaks off its output streams"),
            Action::BreakOutputStreams(h, false) => {
                format!("{h} serves its output streams whole again")
            }
            Action::RefuseStops(h, Some(code)) => {
                format!("{h} answers every CancelExecution and DeleteExecution with {code:?}")
            }
            Action::RefuseStops(h, None) => format!("{h} takes cancels and deletes again"),
            Action::LoseStartAnswers(h, true) => {
                format!("{h} carries out every ExecuteSnippet and loses the answer")
            }
            Action::LoseStartAnswers(h, false) => format!("{h} answers starts again"),
            Action::ReaderBack(client, group, away) => format!(
                "logmon of client {client} {} the FIFOs of {}",
                match away {
                    ReaderAway::Stalled => "reads on",
                    ReaderAway::Gone => "reopens",
                },
                group.as_deref().unwrap_or("every task")
            ),
        }
    }
}

/// A fault of the run, as scheduled.
#[derive(Debug, Clone)]
pub struct Fault {
    /// When it starts.
    pub at: Duration,
    /// When it ends (`None`: never).
    pub until: Option<Duration>,
    /// What.
    pub kind: FaultKind,
    /// Which client.
    pub client: u32,
    /// Largest message latency of a `slow` fault.
    pub latency: Duration,
    /// The task group whose log readers a log fault hits (`None`: all).
    pub group: Option<String>,
}

impl Fault {
    /// Whether it can hold up the tasks of `group`: every fault can,
    /// except a log fault aimed at another group.
    pub fn hits(&self, group: &str) -> bool {
        !self.kind.only_logs() || self.group.as_deref().is_none_or(|g| g == group)
    }
}

/// The concrete run of a scenario for one seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every task, in start order.
    pub tasks: Vec<TaskPlan>,
    /// Every fault.
    pub faults: Vec<Fault>,
    /// The actions they make, in time order (stable for equal times).
    pub actions: Vec<(Duration, Action)>,
}

impl Plan {
    /// Draws the run of `scenario` for `seed`.
    pub fn draw(scenario: &Scenario, seed: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let clients = scenario.cluster.clients;
        let mut tasks = Vec::new();
        let mut n: u32 = 0;
        for (g, group) in scenario.tasks.iter().enumerate() {
            for index in 0..group.count {
                let spread = group.spread.0.as_millis() as u64;
                let offset = if spread == 0 {
                    0
                } else {
                    rng.random_range(0..=spread)
                };
                let alloc_id = format!("{:08x}-0000-4000-8000-{:012x}", g, index);
                let task_id = format!("{alloc_id}/{}/{:08x}", group.name, n);
                tasks.push(TaskPlan {
                    client: n % clients + 1,
                    group: group.name.clone(),
                    index,
                    execution_id: expected_execution_id(&task_id),
                    task_id,
                    alloc_id,
                    start_at: group.start.0 + Duration::from_millis(offset),
                    program: padded(
                        group.program.replace("{i}", &index.to_string()),
                        group.padding,
                    ),
                    extra_config: group.config.clone(),
                    stop_after: group.stop_after.map(|s| s.0),
                    kill_timeout: group.kill_timeout.0,
                    kill_signal: group.kill_signal.clone(),
                    destroy_after: group.destroy_after.map(|s| s.0),
                    expect: group.expect,
                    refusal: group.refusal.clone(),
                    expected_exit: (group.exit_code.is_some() || group.signal.is_some())
                        .then(|| (group.exit_code.unwrap_or(0), group.signal.unwrap_or(0))),
                    results_within: group
                        .results_within
                        .or(scenario.expect.results_within)
                        .map(|s| s.0),
                    agent_crash_after_result: group.agent_crash_after_result,
                    timeout: config_timeout(&group.config),
                    memory_mb: group.memory,
                    memory_max_mb: group.memory_max,
                    signals: {
                        let mut signals: Vec<(Duration, String)> = group
                            .signals
                            .iter()
                            .map(|s| (s.at.0, s.signal.clone()))
                            .collect();
                        signals.sort_by_key(|s| s.0);
                        signals
                    },
                    stats_interval: scenario.cluster.stats_interval.map(|s| s.0),
                    recover_delay: scenario
                        .cluster
                        .recover_delay
                        .map_or(Duration::ZERO, |s| s.0),
                });
                n += 1;
            }
        }
        tasks.sort_by(|a, b| a.start_at.cmp(&b.start_at).then(a.task_id.cmp(&b.task_id)));

        let mut faults: Vec<Fault> = scenario.faults.iter().map(fault_of).collect();
        if let Some(random) = &scenario.random_faults {
            let (from, to) = (
                random.from.0.as_millis() as u64,
                random.to.0.as_millis() as u64,
            );
            for _ in 0..random.count {
                if random.kinds.is_empty() {
                    break;
                }
                let kind = random.kinds[rng.random_range(0..random.kinds.len())];
                let at = Duration::from_millis(rng.random_range(from..=to.max(from)));
                let lasts = Duration::from_millis(
                    rng.random_range(100..=(random.max_for.0.as_millis() as u64).max(100)),
                );
                let client = rng.random_range(1..=clients);
                let latency = Duration::from_millis(rng.random_range(50..=2000));
                faults.push(fault_of(&FaultSpec {
                    at: crate::scenario::Span(at),
                    kind,
                    client,
                    lasts: Some(crate::scenario::Span(lasts)),
                    latency: Some(crate::scenario::Span(latency)),
                    task: None,
                }));
            }
        }
        faults.sort_by(|a, b| a.at.cmp(&b.at).then(a.client.cmp(&b.client)));

        let normal_latency = scenario.cluster.latency[1].0;
        let mut actions = Vec::new();
        for fault in &faults {
            actions.extend(actions_of(fault, normal_latency));
        }
        actions.sort_by_key(|a| a.0);
        Plan {
            tasks,
            faults,
            actions,
        }
    }

    /// Tasks placed on `client`.
    pub fn tasks_of(&self, client: u32) -> Vec<TaskPlan> {
        self.tasks
            .iter()
            .filter(|t| t.client == client)
            .cloned()
            .collect()
    }

    /// Clients that crash and never come back.
    pub fn departed_clients(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::CrashClient && f.until.is_none())
            .map(|f| f.client)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The latest end of a fault on `client` that began by `by` and can
    /// hold up tasks of `group` (zero if none did; a fault still going on
    /// at `by` ends after it).
    pub fn last_fault_end(&self, client: u32, group: &str, by: Duration) -> Duration {
        self.faults
            .iter()
            .filter(|f| f.client == client && f.at <= by && f.hits(group))
            .filter_map(|f| f.until)
            .max()
            .unwrap_or_default()
    }

    /// Whether a fault that can break calls ([`FaultKind::disturbs_calls`])
    /// touched `client` in `[from, to]`: what may explain a failed call, a
    /// "not reachable" or a reconnect.
    pub fn calls_disturbed(&self, client: u32, from: Duration, to: Duration) -> bool {
        self.faults_during(client, from, to)
            .iter()
            .any(|fault| fault.kind.disturbs_calls())
    }

    /// The faults on `client` that overlap `[from, to]`.
    pub fn faults_during(&self, client: u32, from: Duration, to: Duration) -> Vec<&Fault> {
        self.faults
            .iter()
            .filter(|f| f.client == client && f.at <= to && f.until.is_none_or(|u| u >= from))
            .collect()
    }

    /// When `client`'s daemon went down in `[from, to]`: the first crash,
    /// or restart (a restart of a running host is a crash too: faults may
    /// overlap, and the end of one restarts a daemon another crashed).
    pub fn daemon_down_during(
        &self,
        client: u32,
        from: Duration,
        to: Duration,
    ) -> Option<Duration> {
        let daemon = daemon_host(client);
        self.actions
            .iter()
            .filter(|(at, _)| from <= *at && *at <= to)
            .find(|(_, action)| {
                matches!(action, Action::Crash(h) | Action::Restart(h) if *h == daemon)
            })
            .map(|(at, _)| *at)
    }

    /// Whether `client`'s plugin went down (crashed or restarted, with its
    /// client or alone) in `[from, to]`.
    pub fn plugin_down_during(&self, client: u32, from: Duration, to: Duration) -> bool {
        let plugin = plugin_host(client);
        self.actions.iter().any(|(at, action)| {
            from <= *at
                && *at <= to
                && matches!(action, Action::Crash(h) | Action::Restart(h) if *h == plugin)
        })
    }

    /// Whether `client`'s daemon lost its disk in `[from, to]`.
    pub fn daemon_wiped_during(&self, client: u32, from: Duration, to: Duration) -> bool {
        let daemon = daemon_host(client);
        self.actions.iter().any(|(at, action)| {
            from <= *at && *at <= to && matches!(action, Action::Wipe(h) if *h == daemon)
        })
    }
}

fn fault_of(spec: &FaultSpec) -> Fault {
    Fault {
        at: spec.at.0,
        until: spec.lasts.map(|l| spec.at.0 + l.0),
        kind: spec.kind,
        client: spec.client,
        latency: spec.latency.map(|l| l.0).unwrap_or(Duration::from_secs(1)),
        group: spec.task.clone(),
    }
}

fn actions_of(fault: &Fault, normal: Duration) -> Vec<(Duration, Action)> {
    let latency = fault.latency;
    let (plugin, daemon, nomad) = (
        plugin_host(fault.client),
        daemon_host(fault.client),
        nomad_host(fault.client),
    );
    let mut out = Vec::new();
    let at_end = |action: Action, out: &mut Vec<(Duration, Action)>| {
        if let Some(until) = fault.until {
            out.push((until, action));
        }
    };
    match fault.kind {
        FaultKind::Partition => {
            out.push((fault.at, Action::Partition(plugin.clone(), daemon.clone())));
            at_end(Action::Repair(plugin, daemon), &mut out);
        }
        FaultKind::Hold => {
            out.push((fault.at, Action::Hold(plugin.clone(), daemon.clone())));
            at_end(Action::Release(plugin, daemon), &mut out);
        }
        FaultKind::Slow => {
            out.push((
                fault.at,
                Action::Latency(plugin.clone(), daemon.clone(), latency),
            ));
            at_end(Action::Latency(plugin, daemon, normal), &mut out);
        }
        FaultKind::CrashDaemon => {
            out.push((fault.at, Action::Crash(daemon.clone())));
            at_end(Action::Restart(daemon), &mut out);
        }
        FaultKind::WipeDaemon => {
            out.push((fault.at, Action::Crash(daemon.clone())));
            out.push((fault.at, Action::Wipe(daemon.clone())));
            at_end(Action::Restart(daemon), &mut out);
        }
        FaultKind::CrashPlugin => {
            out.push((fault.at, Action::Crash(plugin.clone())));
            at_end(Action::Restart(plugin), &mut out);
        }
        FaultKind::StallLogs | FaultKind::DropLogReader => {
            let away = if fault.kind == FaultKind::StallLogs {
                ReaderAway::Stalled
            } else {
                ReaderAway::Gone
            };
            let group = fault.group.clone();
            out.push((
                fault.at,
                Action::ReaderAway(fault.client, group.clone(), away),
            ));
            at_end(Action::ReaderBack(fault.client, group, away), &mut out);
        }
        FaultKind::BreakOutputStreams => {
            out.push((fault.at, Action::BreakOutputStreams(daemon.clone(), true)));
            at_end(Action::BreakOutputStreams(daemon, false), &mut out);
        }
        FaultKind::LoseStartAnswers => {
            out.push((fault.at, Action::LoseStartAnswers(daemon.clone(), true)));
            at_end(Action::LoseStartAnswers(daemon, false), &mut out);
        }
        FaultKind::FailStops | FaultKind::DenyStops => {
            let code = if fault.kind == FaultKind::FailStops {
                tonic::Code::Internal
            } else {
                tonic::Code::PermissionDenied
            };
            out.push((fault.at, Action::RefuseStops(daemon.clone(), Some(code))));
            at_end(Action::RefuseStops(daemon, None), &mut out);
        }
        FaultKind::CrashClient => {
            out.push((fault.at, Action::Crash(nomad.clone())));
            out.push((fault.at, Action::Crash(plugin.clone())));
            at_end(Action::Restart(plugin), &mut out);
            at_end(Action::Restart(nomad), &mut out);
        }
    }
    out
}

/// `program` with `#` comment lines appended until it is `size` bytes
/// long (or longer).
fn padded(mut program: String, size: usize) -> String {
    const LINE: &str = "# padding padding padding padding padding padding padding padding\n";
    if program.len() < size && !program.ends_with('\n') && !program.is_empty() {
        program.push('\n');
    }
    while program.len() < size {
        program.push_str(LINE);
    }
    program
}
