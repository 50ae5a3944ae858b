//! A fake Nomad client agent, behaving like Nomad's task runner towards
//! the plugin: `SetConfig` with the agent's plugin block encoded against
//! the plugin's own schema, then per task `StartTask`, `WaitTask`,
//! `StopTask` with the job's `kill_timeout`, `DestroyTask`; task handles
//! persisted like Nomad's client state; after a plugin restart or an agent
//! restart, `RecoverTask` from the persisted handle and wait again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drivers::TaskHandle;
use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;

use crate::logs::LogBook;
use crate::net::channel;
use crate::observe::Observations;
use crate::plan::{nomad_host, plugin_host, TaskPlan};
use crate::plugin_host::PLUGIN_PORT;
use crate::trace::Trace;

mod inspector;
mod kill;
mod plugin;
mod signaller;
mod stats_hook;
mod task_run;

pub use stats_hook::{STATS_BACKOFF_LIMIT, STATS_END_WITHIN};

use plugin::{follow_events, follow_fingerprints, Plugin};
use task_run::TaskRun;

/// How often a start that failed for a reason a retry may fix is retried
/// (Nomad's restart policy) before the task is failed.
pub const START_ATTEMPTS: u32 = 5;
/// Delay between start attempts.
pub const START_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Failed `StopTask` calls one kill makes before it gives up and only
/// waits for the exit (Nomad's `killFailureLimit`).
pub const KILL_FAILURE_LIMIT: u32 = 5;
/// Back-off after the first failed `StopTask`, times four per failure
/// (Nomad's `killBackoffBaseline`)...
pub const KILL_BACKOFF_BASELINE: Duration = Duration::from_secs(5);
/// ...up to this (Nomad's `killBackoffLimit`).
pub const KILL_BACKOFF_LIMIT: Duration = Duration::from_secs(120);

/// How long the agent takes to write a received result to its state
/// database: a separate step, so an agent crash can fall between receiving
/// a result and persisting it (the restarted agent then recovers the task
/// and waits again, and the second answer must match the first).
pub const PERSIST_DELAY: Duration = Duration::from_millis(20);

/// Agent crashes a task asked for ([`TaskPlan::agent_crash_after_result`]):
/// turmoil crashes a host only from outside, between steps, so the agent
/// asks and the world obliges. Lives outside the hosts; each task's crash
/// happens once.
#[derive(Debug, Clone, Default)]
pub struct AgentCrashes {
    inner: Arc<Mutex<AgentCrashesInner>>,
}

#[derive(Debug, Default)]
struct AgentCrashesInner {
    /// Tasks whose crash was asked for.
    done: std::collections::BTreeSet<String>,
    /// Clients whose agent is to crash now.
    requested: std::collections::BTreeSet<u32>,
    /// Per client, `StartTask` calls under way whose handle is not
    /// persisted yet. A crash waits for them: the restarted agent would
    /// start such a task again under the same id, where Nomad would give
    /// it a new one (a leak of Nomad's own, not the plugin's to judge).
    starting: BTreeMap<u32, u32>,
}

impl AgentCrashes {
    fn lock(&self) -> MutexGuard<'_, AgentCrashesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `client`'s agent to crash now, for `task_id`'s sake;
    /// false when that task already had its crash.
    fn request(&self, client: u32, task_id: &str) -> bool {
        let mut inner = self.lock();
        if !inner.done.insert(task_id.to_owned()) {
            return false;
        }
        inner.requested.insert(client);
        true
    }

    /// The clients whose agents asked to crash and can now (no start
    /// under way); the others stay asked.
    pub fn take_requested(&self) -> Vec<u32> {
        let mut inner = self.lock();
        let ready: Vec<u32> = inner
            .requested
            .iter()
            .copied()
            .filter(|c| inner.starting.get(c).copied().unwrap_or(0) == 0)
            .collect();
        for client in &ready {
            inner.requested.remove(client);
        }
        ready
    }

    /// A `StartTask` of `client`'s agent begins (`true`) or its handle is
    /// persisted or it failed (`false`).
    fn starting(&self, client: u32, begins: bool) {
        let mut inner = self.lock();
        let n = inner.starting.entry(client).or_default();
        *n = if begins { *n + 1 } else { n.saturating_sub(1) };
    }

    /// `client`'s agent (re)starts: nothing of its is under way.
    fn agent_starts(&self, client: u32) {
        self.lock().starting.remove(&client);
    }
}

/// What the agent persists per task (Nomad's client state database).
#[derive(Debug, Clone, Default)]
pub struct StoredTask {
    /// The handle `StartTask` returned.
    pub handle: Option<TaskHandle>,
    /// Whether its result was received.
    pub result: bool,
    /// Whether it was destroyed.
    pub destroyed: bool,
}

/// The agent's state database; survives agent crashes.
#[derive(Debug, Clone, Default)]
pub struct AgentDisk {
    tasks: Arc<Mutex<BTreeMap<String, StoredTask>>>,
}

impl AgentDisk {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StoredTask>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, task_id: &str) -> StoredTask {
        self.lock().get(task_id).cloned().unwrap_or_default()
    }

    fn update(&self, task_id: &str, f: impl FnOnce(&mut StoredTask)) {
        f(self.lock().entry(task_id.to_owned()).or_default());
    }
}

/// One simulated client's Nomad agent.
#[derive(Clone)]
pub struct NomadAgent {
    /// Client number.
    pub client: u32,
    /// Its tasks.
    pub tasks: Arc<Vec<TaskPlan>>,
    /// The body of the agent's `plugin "nomad-driver-elide" { config { … } }`.
    pub plugin_config: String,
    /// Its state database.
    pub disk: AgentDisk,
    /// Its log FIFOs.
    pub logs: LogBook,
    /// Where it notes what it saw.
    pub seen: Observations,
    /// The run's trace.
    pub trace: Trace,
    /// Where it asks to be crashed.
    pub crashes: AgentCrashes,
}

impl NomadAgent {
    /// Registers the agent host; a restart recovers from the disk.
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        let agent = self.clone();
        sim.host(nomad_host(self.client).as_str(), move || {
            let agent = agent.clone();
            async move {
                agent.run().await;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }

    async fn run(self) {
        let who = nomad_host(self.client);
        self.trace.record(&who, "agent starting");
        self.crashes.agent_starts(self.client);
        let plugin = Arc::new(Plugin {
            channel: channel(&plugin_host(self.client), PLUGIN_PORT),
            plugin_config: self.plugin_config.clone(),
            generation: tokio::sync::Mutex::new(0),
            configured: std::sync::atomic::AtomicU64::new(0),
            task_schema: Mutex::new(None),
            trace: self.trace.clone(),
            who: who.clone(),
        });
        if let Err(problem) = plugin.reconnect(0).await {
            self.trace
                .record(&who, format!("cannot configure the plugin: {problem}"));
            self.seen.task("<agent>", |t| t.surprises.push(problem));
            return;
        }
        tokio::spawn(follow_events(plugin.clone(), self.seen.clone()));
        tokio::spawn(follow_fingerprints(
            plugin.clone(),
            self.seen.clone(),
            self.client,
        ));
        let mut runs = tokio::task::JoinSet::new();
        for plan in self.tasks.iter().cloned() {
            let run = TaskRun {
                plugin: plugin.clone(),
                disk: self.disk.clone(),
                logs: self.logs.clone(),
                seen: self.seen.clone(),
                trace: self.trace.clone(),
                who: who.clone(),
                plan,
                generation: 1,
                crashes: self.crashes.clone(),
                kill: Arc::default(),
                killing: Arc::default(),
                killer: None,
            };
            runs.spawn(run.run());
        }
        while runs.join_next().await.is_some() {}
        self.seen.client_done(self.client);
        self.trace.record(&who, "workload finished");
    }
}
