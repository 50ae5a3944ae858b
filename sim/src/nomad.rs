//! A fake Nomad client agent, behaving like Nomad's task runner towards
//! the plugin: `SetConfig` with the agent's plugin block encoded against
//! the plugin's own schema, then per task `StartTask`, `WaitTask`,
//! `StopTask` with the job's `kill_timeout`, `DestroyTask`; task handles
//! persisted like Nomad's client state; after a plugin restart or an agent
//! restart, `RecoverTask` from the persisted handle and wait again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base::base_plugin_client::BasePluginClient;
use drivers::driver_client::DriverClient;
use drivers::{TaskConfig, TaskHandle};
use elide_proto::hashicorp::nomad::plugins::base::proto as base;
use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::logs::LogBook;
use crate::net::channel;
use crate::observe::{Observations, TaskResult};
use crate::plan::{nomad_host, plugin_host, TaskPlan};
use crate::plugin_host::PLUGIN_PORT;
use crate::trace::Trace;

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

/// The connection to the plugin and what `SetConfig` established.
struct Plugin {
    channel: Channel,
    plugin_config: String,
    /// Bumped each time the plugin is (re)configured.
    generation: tokio::sync::Mutex<u64>,
    /// The generation of the last configuration, readable without waiting.
    configured: std::sync::atomic::AtomicU64,
    task_schema: Mutex<Option<Spec>>,
    trace: Trace,
    who: String,
}

/// Whether a failed plugin call means the plugin is gone (it crashed or
/// restarts), rather than an answer from it.
fn plugin_gone(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Plugin {
    fn driver(&self) -> DriverClient<Channel> {
        DriverClient::new(self.channel.clone())
    }

    /// The generation calls made now are made under.
    fn current(&self) -> u64 {
        self.configured.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn base(&self) -> BasePluginClient<Channel> {
        BasePluginClient::new(self.channel.clone())
    }

    /// After the plugin was seen gone at `seen`: waits for it to answer
    /// and configures it, once per restart however many tasks noticed.
    /// Returns the new generation.
    async fn reconnect(&self, seen: u64) -> Result<u64, String> {
        let mut generation = self.generation.lock().await;
        if *generation != seen {
            return Ok(*generation);
        }
        loop {
            match self.configure().await {
                Ok(()) => break,
                Err(Fatal(problem)) => return Err(problem),
                Err(Retry) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        *generation += 1;
        self.configured
            .store(*generation, std::sync::atomic::Ordering::SeqCst);
        self.trace.record(
            &self.who,
            format!("plugin configured (generation {})", *generation),
        );
        Ok(*generation)
    }

    async fn configure(&self) -> Result<(), ConfigureError> {
        let info = self
            .base()
            .plugin_info(base::PluginInfoRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner();
        if info.r#type != base::PluginType::Driver as i32 {
            return Err(Fatal(format!(
                "plugin type {} is not a driver",
                info.r#type
            )));
        }
        let schema = self
            .base()
            .config_schema(base::ConfigSchemaRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner()
            .spec
            .unwrap_or_default();
        let msgpack = encode(&schema, &self.plugin_config).map_err(Fatal)?;
        let set = self
            .base()
            .set_config(base::SetConfigRequest {
                msgpack_config: msgpack,
                nomad_config: Some(base::NomadConfig {
                    driver: Some(base::NomadDriverConfig {
                        client_max_port: 14512,
                        client_min_port: 14000,
                        topology: None,
                    }),
                }),
                plugin_api_version: info
                    .plugin_api_versions
                    .first()
                    .cloned()
                    .unwrap_or_default(),
            })
            .await;
        match set {
            Ok(_) => {}
            Err(status) if plugin_gone(&status) => return Err(Retry),
            Err(status) => return Err(Fatal(format!("SetConfig refused: {}", status.message()))),
        }
        let task_schema = self
            .driver()
            .task_config_schema(drivers::TaskConfigSchemaRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner()
            .spec
            .unwrap_or_default();
        *self.task_schema.lock().unwrap_or_else(|p| p.into_inner()) = Some(task_schema);
        Ok(())
    }

    fn task_schema(&self) -> Spec {
        self.task_schema
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

enum ConfigureError {
    Retry,
    Fatal(String),
}
use ConfigureError::{Fatal, Retry};

/// Encodes an HCL body against a plugin schema, as Nomad does.
fn encode(schema: &Spec, hcl_text: &str) -> Result<Vec<u8>, String> {
    let body: hcl::Body = hcl::parse(hcl_text).map_err(|e| format!("bad HCL: {e}"))?;
    let value = elide_runner::cty::body_to_value(&body, &hcl::eval::Context::new(), "config")
        .map_err(|e| e.to_string())?;
    elide_runner::cty::encode(schema, &value, "config").map_err(|e| e.to_string())
}

/// Records the driver's task events (re-subscribing after plugin restarts).
async fn follow_events(plugin: Arc<Plugin>, seen: Observations) {
    loop {
        if let Ok(response) = plugin
            .driver()
            .task_events(drivers::TaskEventsRequest {})
            .await
        {
            let mut events = response.into_inner();
            while let Some(Ok(event)) = events.next().await {
                let dropped = dropped_range(&event.annotations);
                seen.task(&event.task_id, |t| {
                    t.events.push(event.message.clone());
                    t.dropped.extend(dropped);
                });
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The byte range a "lost output" event reports, from its annotations.
fn dropped_range(annotations: &BTreeMap<String, String>) -> Option<(String, u64, u64)> {
    let stream = annotations.get("stream")?.clone();
    let from = annotations.get("from_offset")?.parse().ok()?;
    let to = annotations.get("to_offset")?.parse().ok()?;
    Some((stream, from, to))
}

/// One task's life, as Nomad's task runner drives it.
struct TaskRun {
    plugin: Arc<Plugin>,
    disk: AgentDisk,
    logs: LogBook,
    seen: Observations,
    trace: Trace,
    who: String,
    plan: TaskPlan,
    generation: u64,
    /// Set once Nomad decided to kill the task (its kill context is done).
    kill: Arc<tokio::sync::Notify>,
    killing: Arc<std::sync::atomic::AtomicBool>,
    /// The kill under way ([`KillRun`]).
    killer: Option<tokio::task::JoinHandle<()>>,
}

/// How a task ended before it could be waited on.
enum Ended {
    /// A result was recorded (a start or a recovery failed for good).
    Recorded,
    /// `StartTask` refused it; nothing ran.
    Rejected,
}

impl TaskRun {
    fn label(&self) -> String {
        format!("{}#{}", self.plan.group, self.plan.index)
    }

    fn note(&self, line: impl AsRef<str>) {
        self.trace
            .record(&self.who, format!("{} {}", self.label(), line.as_ref()));
    }

    async fn run(mut self) {
        let stored = self.disk.get(&self.plan.task_id);
        if stored.destroyed {
            return;
        }
        let handle = match stored.handle.clone() {
            Some(handle) if !stored.result => match self.recover(&handle).await {
                Ok(()) => Some(handle),
                Err(Ended::Recorded) => None,
                Err(Ended::Rejected) => return,
            },
            Some(handle) => Some(handle),
            None => {
                let now = turmoil::sim_elapsed().unwrap_or_default();
                if self.plan.start_at > now {
                    tokio::time::sleep(self.plan.start_at - now).await;
                }
                match self.start().await {
                    Ok(handle) => Some(handle),
                    Err(Ended::Recorded) => None,
                    Err(Ended::Rejected) => return,
                }
            }
        };
        if let Some(handle) = handle {
            if !self.disk.get(&self.plan.task_id).result {
                let interrupt = |what: Interruption, after: Option<Duration>| {
                    after.map(|after| {
                        let run = InterruptRun {
                            what,
                            plugin: self.plugin.clone(),
                            disk: self.disk.clone(),
                            seen: self.seen.clone(),
                            trace: self.trace.clone(),
                            who: self.who.clone(),
                            plan: self.plan.clone(),
                        };
                        tokio::spawn(run.run(after))
                    })
                };
                // The job is stopped after stop_after: Nomad's kill context.
                let kill_at = self.plan.stop_after.map(|after| {
                    let (seen, plan) = (self.seen.clone(), self.plan.clone());
                    let (kill, killing) = (self.kill.clone(), self.killing.clone());
                    tokio::spawn(async move {
                        sleep_until_after_start(&seen, &plan, after).await;
                        killing.store(true, std::sync::atomic::Ordering::SeqCst);
                        kill.notify_one();
                    })
                });
                let destroyer = interrupt(Interruption::ForceDestroy, self.plan.destroy_after);
                self.wait(&handle).await;
                for background in [kill_at, destroyer, self.killer.take()]
                    .into_iter()
                    .flatten()
                {
                    background.abort();
                }
            }
        }
        self.destroy().await;
    }

    fn task_config(&self) -> Result<TaskConfig, String> {
        let plan = &self.plan;
        let mut text = plan.extra_config.clone();
        let extra: hcl::Body = hcl::parse(&text).map_err(|e| format!("bad task config: {e}"))?;
        if !extra.attributes().any(|a| a.key() == "language") {
            text.push_str("\nlanguage = \"python\"\n");
        }
        if !extra.attributes().any(|a| a.key() == "code") {
            let code = hcl::Body::builder()
                .add_attribute(("code", plan.program.clone()))
                .build();
            text.push('\n');
            text.push_str(&hcl::to_string(&code).map_err(|e| e.to_string())?);
        }
        let msgpack = encode(&self.plugin.task_schema(), &text)?;
        Ok(TaskConfig {
            id: plan.task_id.clone(),
            name: plan.group.clone(),
            job_name: "sim".into(),
            job_id: "sim".into(),
            task_group_name: plan.group.clone(),
            namespace: "default".into(),
            alloc_id: plan.alloc_id.clone(),
            node_name: self.who.clone(),
            msgpack_driver_config: msgpack,
            env: [
                ("NOMAD_TASK_NAME".to_owned(), plan.group.clone()),
                ("NOMAD_ALLOC_ID".to_owned(), plan.alloc_id.clone()),
            ]
            .into(),
            resources: Some(drivers::Resources {
                allocated_resources: Some(drivers::AllocatedTaskResources {
                    memory: Some(drivers::AllocatedMemoryResources {
                        memory_mb: 256,
                        memory_max_mb: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            alloc_dir: plan.alloc_dir(),
            stdout_path: plan.stdout_path(),
            stderr_path: plan.stderr_path(),
            ..Default::default()
        })
    }

    fn record_result(&self, result: TaskResult) {
        self.note(format!(
            "result exit_code={} signal={} err={:?}",
            result.exit_code, result.signal, result.err
        ));
        self.seen
            .task(&self.plan.task_id, |t| t.results.push(result));
        self.disk.update(&self.plan.task_id, |s| s.result = true);
    }

    fn fail(&self, err: String) {
        self.record_result(TaskResult {
            at: turmoil::sim_elapsed().unwrap_or_default(),
            exit_code: 0,
            signal: 0,
            err,
        });
    }

    async fn start(&mut self) -> Result<TaskHandle, Ended> {
        // Nomad's prestart: logmon creates the FIFOs.
        self.logs.create(&self.plan.stdout_path());
        self.logs.create(&self.plan.stderr_path());
        let config = match self.task_config() {
            Ok(config) => config,
            Err(problem) => {
                // Nomad would refuse the job at submission.
                self.note(format!("rejected by the schema: {problem}"));
                self.seen
                    .task(&self.plan.task_id, |t| t.rejected = Some(problem));
                return Err(Ended::Rejected);
            }
        };
        let mut failures = 0;
        loop {
            self.note("StartTask");
            self.seen.task(&self.plan.task_id, |t| t.start_calls += 1);
            let started = self
                .driver()
                .start_task(drivers::StartTaskRequest {
                    task: Some(config.clone()),
                })
                .await;
            match started {
                Ok(response) => {
                    let response = response.into_inner();
                    let Some(handle) = response.handle else {
                        self.fail(format!(
                            "StartTask answered without a handle: {}",
                            response.driver_error_msg
                        ));
                        return Err(Ended::Recorded);
                    };
                    // Persisted before anything else, as Nomad does.
                    self.disk
                        .update(&self.plan.task_id, |s| s.handle = Some(handle.clone()));
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    self.seen.task(&self.plan.task_id, |t| {
                        t.started_at.get_or_insert(now);
                    });
                    self.note("started");
                    return Ok(handle);
                }
                Err(status) if plugin_gone(&status) => {
                    self.note(format!("StartTask: plugin gone ({})", status.code()));
                    self.reconnect().await;
                }
                Err(status) if !recoverable(&status) => {
                    let why = status.message().to_owned();
                    self.note(format!("StartTask refused: {why}"));
                    if status.message().contains("already started") {
                        self.seen.task(&self.plan.task_id, |t| {
                            t.surprises
                                .push(format!("StartTask after a plugin restart: {why}"))
                        });
                    }
                    self.seen
                        .task(&self.plan.task_id, |t| t.rejected = Some(why));
                    self.disk.update(&self.plan.task_id, |s| s.destroyed = true);
                    return Err(Ended::Rejected);
                }
                Err(status) => {
                    failures += 1;
                    self.note(format!(
                        "StartTask failed ({failures}): {}",
                        status.message()
                    ));
                    if failures >= START_ATTEMPTS {
                        self.fail(format!("failed to start: {}", status.message()));
                        return Err(Ended::Recorded);
                    }
                    tokio::time::sleep(START_RETRY_DELAY).await;
                }
            }
        }
    }

    /// A driver client, noting the plugin generation the call is made
    /// under (so a failure reconnects that generation, not an older one).
    fn driver(&mut self) -> DriverClient<Channel> {
        self.generation = self.plugin.current();
        self.plugin.driver()
    }

    async fn reconnect(&mut self) {
        match self.plugin.reconnect(self.generation).await {
            Ok(generation) => self.generation = generation,
            Err(problem) => {
                self.seen
                    .task(&self.plan.task_id, |t| t.surprises.push(problem));
                // Nothing else to do: keep trying, the run's limit ends it.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// `RecoverTask` with the persisted handle (after a plugin or agent
    /// restart). A refusal ends the task with an explicit failure.
    async fn recover(&mut self, handle: &TaskHandle) -> Result<(), Ended> {
        loop {
            let recovered = self
                .driver()
                .recover_task(drivers::RecoverTaskRequest {
                    task_id: self.plan.task_id.clone(),
                    handle: Some(handle.clone()),
                })
                .await;
            match recovered {
                Ok(_) => {
                    self.note("recovered");
                    return Ok(());
                }
                Err(status) if plugin_gone(&status) => self.reconnect().await,
                Err(status) => {
                    self.note(format!("RecoverTask failed: {}", status.message()));
                    self.fail(format!("failed to recover task: {}", status.message()));
                    return Err(Ended::Recorded);
                }
            }
        }
    }

    /// Nomad's kill (`handleKill` → `killTask`) on the current plugin:
    /// replaces a kill under way on an earlier one.
    fn start_kill(&mut self) {
        if let Some(earlier) = self.killer.take() {
            earlier.abort();
        }
        let run = KillRun {
            plugin: self.plugin.clone(),
            disk: self.disk.clone(),
            seen: self.seen.clone(),
            trace: self.trace.clone(),
            who: self.who.clone(),
            plan: self.plan.clone(),
        };
        self.killer = Some(tokio::spawn(run.run()));
    }

    async fn wait(&mut self, handle: &TaskHandle) {
        loop {
            // As Nomad's wait loop: once the kill context is done (also
            // again after every recovery on a restarted plugin), kill.
            if self.killing.load(std::sync::atomic::Ordering::SeqCst) && self.killer.is_none() {
                self.start_kill();
            }
            let task_id = self.plan.task_id.clone();
            let mut driver = self.driver();
            let waiting = driver.wait_task(drivers::WaitTaskRequest { task_id });
            tokio::pin!(waiting);
            let waited = loop {
                tokio::select! {
                    biased;
                    waited = &mut waiting => break waited,
                    _ = self.kill.notified(), if self.killer.is_none() => self.start_kill(),
                }
            };
            match waited {
                Ok(response) => {
                    let response = response.into_inner();
                    let Some(result) = response.result else {
                        self.seen.task(&self.plan.task_id, |t| {
                            t.surprises.push("WaitTask without a result".into())
                        });
                        self.fail(response.err);
                        return;
                    };
                    self.record_result(TaskResult {
                        at: turmoil::sim_elapsed().unwrap_or_default(),
                        exit_code: result.exit_code,
                        signal: result.signal,
                        err: response.err,
                    });
                    return;
                }
                Err(status) if plugin_gone(&status) || status.code() == Code::NotFound => {
                    self.note(format!(
                        "WaitTask: {} ({})",
                        status.code(),
                        status.message()
                    ));
                    self.reconnect().await;
                    if self.recover(handle).await.is_err() {
                        return;
                    }
                    // Nomad's kill on the old plugin ended with the wait;
                    // a kill requested before goes again on the new one.
                    if let Some(earlier) = self.killer.take() {
                        earlier.abort();
                    }
                }
                Err(status) => {
                    self.seen.task(&self.plan.task_id, |t| {
                        t.surprises.push(format!("WaitTask failed: {status}"))
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// `DestroyTask` after the result. Nomad calls it once and ignores an
    /// error, so a call that never reached a plugin (it was down) leaks the
    /// execution record in Nomad too, and no plugin can learn of it; this
    /// agent calls again on the restarted plugin instead, so that the
    /// clean-up invariant judges the plugin. A call the plugin received
    /// before crashing is covered by the plugin's delete journal whether or
    /// not this retry comes.
    async fn destroy(&mut self) {
        for _ in 0..20 {
            let destroyed = self
                .driver()
                .destroy_task(drivers::DestroyTaskRequest {
                    task_id: self.plan.task_id.clone(),
                    force: true,
                })
                .await;
            match destroyed {
                Ok(_) => {
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    self.seen
                        .task(&self.plan.task_id, |t| t.destroyed_at = Some(now));
                    self.disk.update(&self.plan.task_id, |s| s.destroyed = true);
                    self.note("destroyed");
                    return;
                }
                Err(status) if plugin_gone(&status) => self.reconnect().await,
                Err(status) => {
                    self.seen.task(&self.plan.task_id, |t| {
                        t.surprises.push(format!("DestroyTask failed: {status}"))
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Whether the driver marked a `StartTask` error as worth retrying.
fn recoverable(status: &tonic::Status) -> bool {
    status.code() != Code::InvalidArgument
        && elide_proto::recoverable::recoverable_flag(status).unwrap_or(true)
}

/// Nomad's `killTask` for one plugin: `StopTask`, retried after
/// failures with back-offs of 5 s, 20 s, 80 s, 120 s (four times longer
/// each time, at most [`KILL_BACKOFF_LIMIT`]) up to [`KILL_FAILURE_LIMIT`]
/// calls, ending early once the task has its result; then Nomad only waits
/// for the exit, with no time limit.
struct KillRun {
    plugin: Arc<Plugin>,
    disk: AgentDisk,
    seen: Observations,
    trace: Trace,
    who: String,
    plan: TaskPlan,
}

impl KillRun {
    async fn run(self) {
        let label = format!("{}#{}", self.plan.group, self.plan.index);
        for failures in 0..KILL_FAILURE_LIMIT {
            if self.disk.get(&self.plan.task_id).result {
                return;
            }
            let now = turmoil::sim_elapsed().unwrap_or_default();
            self.seen.task(&self.plan.task_id, |t| {
                t.stop_called_at.get_or_insert(now);
            });
            self.trace.record(&self.who, format!("{label} StopTask"));
            let stopped = self
                .plugin
                .driver()
                .stop_task(drivers::StopTaskRequest {
                    task_id: self.plan.task_id.clone(),
                    timeout: Some(elide_proto::duration_to_proto(self.plan.kill_timeout)),
                    signal: self.plan.kill_signal.clone(),
                })
                .await;
            let Err(status) = stopped else { return };
            let backoff = (KILL_BACKOFF_BASELINE * 4u32.pow(failures)).min(KILL_BACKOFF_LIMIT);
            self.trace.record(
                &self.who,
                format!(
                    "{label} StopTask failed: {} (retry in {backoff:?})",
                    status.message()
                ),
            );
            tokio::time::sleep(backoff).await;
        }
        self.trace.record(
            &self.who,
            format!("{label} failed to kill task; waiting for its exit"),
        );
    }
}

/// What Nomad does to a running task from outside its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    /// `DestroyTask(force = true)` with no stop first, as Nomad does when
    /// it garbage-collects an allocation whose kill failed.
    ForceDestroy,
}

/// One [`Interruption`] of a task, retried until it is accepted or the
/// task has its result.
struct InterruptRun {
    what: Interruption,
    plugin: Arc<Plugin>,
    disk: AgentDisk,
    seen: Observations,
    trace: Trace,
    who: String,
    plan: TaskPlan,
}

impl InterruptRun {
    async fn run(self, after: Duration) {
        sleep_until_after_start(&self.seen, &self.plan, after).await;
        let label = format!("{}#{}", self.plan.group, self.plan.index);
        let (call, attempt) = match self.what {
            Interruption::ForceDestroy => ("DestroyTask", "DestroyTask(force) while running"),
        };
        loop {
            if self.disk.get(&self.plan.task_id).result {
                return;
            }
            let now = turmoil::sim_elapsed().unwrap_or_default();
            self.seen.task(&self.plan.task_id, |t| {
                match self.what {
                    Interruption::ForceDestroy => t.force_destroyed_at.get_or_insert(now),
                };
            });
            self.trace.record(&self.who, format!("{label} {attempt}"));
            let task_id = self.plan.task_id.clone();
            let answered = match self.what {
                Interruption::ForceDestroy => self
                    .plugin
                    .driver()
                    .destroy_task(drivers::DestroyTaskRequest {
                        task_id,
                        force: true,
                    })
                    .await
                    .map(drop),
            };
            match answered {
                Ok(()) => return,
                // Nomad retries a failed kill.
                Err(status) => self.trace.record(
                    &self.who,
                    format!("{label} {call} failed: {}", status.message()),
                ),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Sleeps until `after` past the task's (first successful) start.
async fn sleep_until_after_start(seen: &Observations, plan: &TaskPlan, after: Duration) {
    let started = seen.seen(&plan.task_id).started_at.unwrap_or_default();
    let at = started + after;
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}
