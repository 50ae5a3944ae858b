//! One task's life, as Nomad's task runner drives it: start with retries,
//! wait, recover after restarts, stop and destroy.

use std::sync::Arc;
use std::time::Duration;

use drivers::driver_client::DriverClient;
use drivers::{TaskConfig, TaskHandle};
use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;
use tonic::transport::Channel;
use tonic::Code;

use super::kill::{sleep_until_after_start, InterruptRun, Interruption, KillRun};
use super::plugin::{encode, plugin_gone, Plugin};
use super::signaller::Signaller;
use super::stats_hook::StatsHook;
use super::{AgentCrashes, AgentDisk, PERSIST_DELAY, START_ATTEMPTS, START_RETRY_DELAY};
use crate::logs::LogBook;
use crate::observe::{Observations, TaskResult};
use crate::plan::TaskPlan;
use crate::trace::Trace;

/// One task's life, as Nomad's task runner drives it.
pub(super) struct TaskRun {
    pub(super) plugin: Arc<Plugin>,
    pub(super) disk: AgentDisk,
    pub(super) logs: LogBook,
    pub(super) seen: Observations,
    pub(super) trace: Trace,
    pub(super) who: String,
    pub(super) plan: TaskPlan,
    pub(super) generation: u64,
    /// Where it asks for the agent to crash.
    pub(super) crashes: AgentCrashes,
    /// Set once Nomad decided to kill the task (its kill context is done).
    pub(super) kill: Arc<tokio::sync::Notify>,
    pub(super) killing: Arc<std::sync::atomic::AtomicBool>,
    /// The kill under way ([`KillRun`]).
    pub(super) killer: Option<tokio::task::JoinHandle<()>>,
}

/// How a task ended before it could be waited on.
pub(super) enum Ended {
    /// A result was recorded (a start or a recovery failed for good).
    Recorded,
    /// `StartTask` refused it; nothing ran.
    Rejected,
}

impl TaskRun {
    pub(super) fn label(&self) -> String {
        format!("{}#{}", self.plan.group, self.plan.index)
    }

    /// A plugin took the task (started or recovered it).
    fn attached(&self) {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        self.seen
            .task(&self.plan.task_id, |t| t.attached_at = Some(now));
    }

    pub(super) fn note(&self, line: impl AsRef<str>) {
        self.trace
            .record(&self.who, format!("{} {}", self.label(), line.as_ref()));
    }

    pub(super) async fn run(mut self) {
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
                // Nomad's poststart hooks: stats collection until the
                // exit; and the operator's signals.
                let (exited, exited_rx) = tokio::sync::watch::channel(false);
                if let Some(interval) = self.plan.stats_interval {
                    tokio::spawn(
                        StatsHook {
                            plugin: self.plugin.clone(),
                            seen: self.seen.clone(),
                            trace: self.trace.clone(),
                            who: self.who.clone(),
                            label: self.label(),
                            task_id: self.plan.task_id.clone(),
                            interval,
                            exited: exited_rx,
                        }
                        .run(),
                    );
                }
                // The signaller is left to end by itself after the result:
                // a call under way is answered and noted.
                if !self.plan.signals.is_empty() {
                    tokio::spawn(
                        Signaller {
                            plugin: self.plugin.clone(),
                            disk: self.disk.clone(),
                            seen: self.seen.clone(),
                            trace: self.trace.clone(),
                            who: self.who.clone(),
                            plan: self.plan.clone(),
                        }
                        .run(),
                    );
                }
                self.wait(&handle).await;
                let _ = exited.send(true);
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

    pub(super) fn task_config(&self) -> Result<TaskConfig, String> {
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
            // As the client fills them in (protocol notes §4): the task's
            // `memory` and `memory_max`, and the Linux limit computed from
            // them, max(memory, memory_max) MiB. No cgroup path: the
            // simulated client manages no cgroups.
            resources: Some(drivers::Resources {
                allocated_resources: Some(drivers::AllocatedTaskResources {
                    cpu: Some(drivers::AllocatedCpuResources { cpu_shares: 100 }),
                    memory: Some(drivers::AllocatedMemoryResources {
                        memory_mb: plan.memory_mb,
                        memory_max_mb: plan.memory_max_mb,
                    }),
                    ..Default::default()
                }),
                linux_resources: Some(drivers::LinuxResources {
                    cpu_shares: 100,
                    memory_limit_bytes: plan.memory_mb.max(plan.memory_max_mb) * 1024 * 1024,
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

    /// Receives a result, then persists it in a separate step (Nomad
    /// updates the task state, then writes it to its state database). An
    /// agent crash in between leaves it received but not persisted.
    pub(super) async fn record_result(&self, result: TaskResult) {
        self.receive_and_persist(result, self.plan.agent_crash_after_result)
            .await;
    }

    /// `crash_between`: the agent crashes after receiving, before
    /// persisting (once per task; see [`TaskPlan::agent_crash_after_result`]).
    async fn receive_and_persist(&self, result: TaskResult, crash_between: bool) {
        self.note(format!(
            "result exit_code={} signal={}{} err={:?}",
            result.exit_code,
            result.signal,
            if result.oom_killed { " oom_killed" } else { "" },
            result.err
        ));
        let mut index = 0;
        self.seen.task(&self.plan.task_id, |t| {
            t.results.push(result);
            index = t.results.len() - 1;
        });
        if crash_between && self.crashes.request(self.plan.client, &self.plan.task_id) {
            self.note("agent crashes before persisting the result");
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(PERSIST_DELAY).await;
        self.seen.task(&self.plan.task_id, |t| {
            t.results[index].persisted = true;
        });
        self.disk.update(&self.plan.task_id, |s| s.result = true);
    }

    /// The agent's own failure of a task (a refused start or recovery):
    /// no exit code is known, which Nomad (1.10 on) reports as -1, as the
    /// plugin does for a task whose ending it lost. Not a `WaitTask`
    /// answer, so the planned crash between receiving and persisting a
    /// result does not fall here: a restarted agent with no persisted
    /// handle and no persisted result would start the task afresh, as
    /// Nomad's task runner does, and that new run's answer may differ.
    pub(super) async fn fail(&self, err: String) {
        let result = TaskResult {
            at: turmoil::sim_elapsed().unwrap_or_default(),
            exit_code: -1,
            signal: 0,
            oom_killed: false,
            err,
            persisted: false,
        };
        self.receive_and_persist(result, false).await;
    }

    pub(super) async fn start(&mut self) -> Result<TaskHandle, Ended> {
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
            self.crashes.starting(self.plan.client, true);
            let started = self
                .driver()
                .start_task(drivers::StartTaskRequest {
                    task: Some(config.clone()),
                })
                .await;
            if !matches!(&started, Ok(r) if r.get_ref().handle.is_some()) {
                self.crashes.starting(self.plan.client, false);
            }
            match started {
                Ok(response) => {
                    let response = response.into_inner();
                    let Some(handle) = response.handle else {
                        self.fail(format!(
                            "StartTask answered without a handle: {}",
                            response.driver_error_msg
                        ))
                        .await;
                        return Err(Ended::Recorded);
                    };
                    // Persisted before anything else, as Nomad does.
                    self.disk
                        .update(&self.plan.task_id, |s| s.handle = Some(handle.clone()));
                    self.crashes.starting(self.plan.client, false);
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    self.seen.task(&self.plan.task_id, |t| {
                        t.started_at.get_or_insert(now);
                    });
                    self.note("started");
                    self.attached();
                    return Ok(handle);
                }
                Err(status) if plugin_gone(&status) => {
                    self.note(format!("StartTask: plugin gone ({})", status.code()));
                    self.reconnect().await;
                }
                // Nomad's reading: no RecoverableError detail is not recoverable.
                Err(status) if elide_nomad_client::recoverable(&status) != Some(true) => {
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
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    self.seen.task(&self.plan.task_id, |t| {
                        t.start_failures.push((now, status.message().to_owned()))
                    });
                    if failures >= START_ATTEMPTS {
                        self.fail(format!("failed to start: {}", status.message()))
                            .await;
                        return Err(Ended::Recorded);
                    }
                    tokio::time::sleep(START_RETRY_DELAY).await;
                }
            }
        }
    }

    /// A driver client, noting the plugin generation the call is made
    /// under (so a failure reconnects that generation, not an older one).
    pub(super) fn driver(&mut self) -> DriverClient<Channel> {
        self.generation = self.plugin.current();
        self.plugin.driver()
    }

    pub(super) async fn reconnect(&mut self) {
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
    pub(super) async fn recover(&mut self, handle: &TaskHandle) -> Result<(), Ended> {
        loop {
            self.seen.task(&self.plan.task_id, |t| t.recover_calls += 1);
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
                    self.attached();
                    return Ok(());
                }
                Err(status) if plugin_gone(&status) => self.reconnect().await,
                Err(status) => {
                    self.note(format!("RecoverTask failed: {}", status.message()));
                    self.fail(format!("failed to recover task: {}", status.message()))
                        .await;
                    return Err(Ended::Recorded);
                }
            }
        }
    }

    /// Nomad's kill (`handleKill` → `killTask`) on the current plugin:
    /// replaces a kill under way on an earlier one.
    /// Returns a notification of its first `StopTask` being answered.
    pub(super) fn start_kill(&mut self) -> Arc<tokio::sync::Notify> {
        if let Some(earlier) = self.killer.take() {
            earlier.abort();
        }
        let answered = Arc::new(tokio::sync::Notify::new());
        let run = KillRun {
            plugin: self.plugin.clone(),
            disk: self.disk.clone(),
            seen: self.seen.clone(),
            trace: self.trace.clone(),
            who: self.who.clone(),
            plan: self.plan.clone(),
            answered: answered.clone(),
        };
        self.killer = Some(tokio::spawn(run.run()));
        answered
    }

    pub(super) async fn wait(&mut self, handle: &TaskHandle) {
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
                    _ = self.kill.notified(), if self.killer.is_none() => drop(self.start_kill()),
                }
            };
            match waited {
                Ok(response) => {
                    let response = response.into_inner();
                    let Some(result) = response.result else {
                        self.seen.task(&self.plan.task_id, |t| {
                            t.surprises.push("WaitTask without a result".into())
                        });
                        self.fail(response.err).await;
                        return;
                    };
                    self.record_result(TaskResult {
                        at: turmoil::sim_elapsed().unwrap_or_default(),
                        exit_code: result.exit_code,
                        signal: result.signal,
                        oom_killed: result.oom_killed,
                        err: response.err,
                        persisted: false,
                    })
                    .await;
                    self.inspect().await;
                    return;
                }
                Err(status) if plugin_gone(&status) || status.code() == Code::NotFound => {
                    self.note(format!(
                        "WaitTask: {} ({})",
                        status.code(),
                        status.message()
                    ));
                    self.reconnect().await;
                    // Nomad's kill on the old plugin ended with the wait; a
                    // kill requested before goes again on the new one, on
                    // its own path, so its StopTask may well come before
                    // the wait path's RecoverTask: here it always does (the
                    // driver must keep such a stop and apply it).
                    if self.killing.load(std::sync::atomic::Ordering::SeqCst) {
                        self.start_kill().notified().await;
                        // The wait path may come much later (a client
                        // restoring many allocations): the stop must not
                        // wait for it.
                        tokio::time::sleep(self.plan.recover_delay).await;
                    }
                    if self.recover(handle).await.is_err() {
                        return;
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
    pub(super) async fn destroy(&mut self) {
        for _ in 0..20 {
            self.seen.task(&self.plan.task_id, |t| t.destroy_calls += 1);
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
