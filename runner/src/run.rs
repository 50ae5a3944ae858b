//! Running a job file the way a Nomad client would run its `elide` tasks:
//! plugin launch and configuration, a healthy fingerprint, alloc and task
//! directories, templates, `StartTask`, output through the log FIFOs,
//! `WaitTask`, `StopTask` on interruption, `DestroyTask`, and cleanup on
//! every path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::base::proto::{
    ConfigSchemaRequest, NomadConfig, NomadDriverConfig, PluginInfoRequest, SetConfigRequest,
};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, CapabilitiesRequest,
    DestroyTaskRequest, FingerprintRequest, InitRequest, LinuxResources, Resources,
    StartTaskRequest, StopTaskRequest, TaskConfig, TaskConfigSchemaRequest, TaskEventsRequest,
    WaitTaskRequest, WaitTaskResponse,
};
use hcl::eval::Context;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::agent_config::{self, AgentConfigError};
use crate::alloc::{AllocDir, AllocError, TaskDir};
use crate::daemon::{self, DaemonError, PrivateDaemon};
use crate::env::{self, EnvError, Placement};
use crate::jobspec::{Group, Job, JobError, JobType, Task};
use crate::logmon::{FifoForwarder, Sink};
use crate::network::{self, AssignedPort};
use crate::plugin_host::{PluginError, PluginHost};
use crate::template::{self, TemplateError};
use elide_cty::{self as cty, CtyError};

/// The driver name the plugin reports and jobs use.
pub const DRIVER_NAME: &str = "elide";
/// The daemon socket the plugin uses when its config names none.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/elide/daemon.sock";
/// How long the plugin may take to report a HEALTHY fingerprint.
pub const HEALTHY_LIMIT: Duration = Duration::from_secs(30);
/// Deadline of short RPCs (schemas, SetConfig, StartTask, DestroyTask).
pub const RPC_LIMIT: Duration = Duration::from_secs(30);
/// Extra time, beyond `kill_timeout`, for a stopped task to report its exit.
pub const STOP_MARGIN: Duration = Duration::from_secs(15);
/// How long a task's output may trail its exit.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What to run and with what.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job file.
    pub job_file: PathBuf,
    /// Only this task (must be an `elide` task).
    pub task: Option<String>,
    /// Agent config file holding `plugin "nomad-driver-elide" { config { … } }`.
    pub agent_config: Option<PathBuf>,
    /// Keep the alloc directories (and print where they are).
    pub keep_alloc: bool,
    /// The `nomad-driver-elide` binary.
    pub plugin: PathBuf,
    /// The `elide-daemon` binary (for a private daemon).
    pub daemon: PathBuf,
}

/// Why a run failed before its tasks could run to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job file.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The job has no `elide` task.
    #[error("{file}: no task uses driver = \"{DRIVER_NAME}\" (tasks: {tasks})")]
    NoElideTasks {
        /// The job file.
        file: PathBuf,
        /// Every task with its driver.
        tasks: String,
    },
    /// `--task` names no `elide` task.
    #[error("{file}: no elide task named {name:?}; elide tasks: {known}")]
    UnknownTask {
        /// The job file.
        file: PathBuf,
        /// The requested name.
        name: String,
        /// The elide tasks.
        known: String,
    },
    /// The agent config file.
    #[error(transparent)]
    AgentConfig(#[from] AgentConfigError),
    /// The plugin config does not fit the plugin's schema.
    #[error("{file}: plugin \"{label}\" {error}")]
    PluginConfig {
        /// The agent config file (or "built-in default").
        file: String,
        /// The plugin block's label.
        label: &'static str,
        /// The mismatch.
        error: CtyError,
    },
    /// A task's config does not fit the plugin's task schema.
    #[error("{file}: task {task:?}: {error}")]
    TaskConfig {
        /// The job file.
        file: PathBuf,
        /// The task.
        task: String,
        /// The mismatch.
        error: CtyError,
    },
    /// Launching or reaching the plugin.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The plugin is not the elide driver.
    #[error("{binary} reports driver name {name:?}, expected {DRIVER_NAME:?}")]
    WrongPlugin {
        /// The binary.
        binary: PathBuf,
        /// What it reported.
        name: String,
    },
    /// A plugin RPC failed.
    #[error("{call} failed: {message}")]
    Rpc {
        /// The RPC (and task).
        call: String,
        /// The status message.
        message: String,
    },
    /// The driver never became healthy.
    #[error("the driver did not report HEALTHY within {limit:?}: {description}")]
    Unhealthy {
        /// The limit.
        limit: Duration,
        /// The last health description.
        description: String,
    },
    /// The private daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Directories and FIFOs.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Templates.
    #[error("task {task:?}: {error}")]
    Template {
        /// The task.
        task: String,
        /// The problem.
        error: TemplateError,
    },
    /// The task env.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// No host port could be assigned.
    #[error("group {group:?}: {problem}")]
    Ports {
        /// The group.
        group: String,
        /// What failed.
        problem: String,
    },
    /// Temp dir creation.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    /// SIGINT/SIGTERM arrived before the tasks started.
    #[error("interrupted before the tasks started")]
    Interrupted,
}

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The task.
    pub task: String,
    /// Its exit code (128+N for signal N; 1 for a driver error with code 0).
    pub exit_code: i32,
}

/// How the run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Each task's outcome, in job order.
    pub tasks: Vec<TaskOutcome>,
    /// Where the alloc dirs were kept (with `--keep-alloc`).
    pub kept: Option<PathBuf>,
}

impl Outcome {
    /// The first non-zero task exit code, else 0.
    pub fn exit_code(&self) -> i32 {
        self.tasks
            .iter()
            .map(|t| t.exit_code)
            .find(|c| *c != 0)
            .unwrap_or(0)
    }
}

/// The tasks to run: `driver = "elide"`, or the one named by `--task`.
pub fn select_tasks<'a>(
    job: &'a Job,
    only: Option<&str>,
) -> Result<Vec<(&'a Group, &'a Task)>, RunError> {
    let elide: Vec<_> = job.tasks_with_driver(DRIVER_NAME).collect();
    if elide.is_empty() {
        let tasks = job
            .groups
            .iter()
            .flat_map(|g| g.tasks.iter())
            .map(|t| format!("{} (driver {:?})", t.name, t.driver))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RunError::NoElideTasks {
            file: job.file.clone(),
            tasks: if tasks.is_empty() {
                "none".into()
            } else {
                tasks
            },
        });
    }
    let Some(name) = only else { return Ok(elide) };
    let chosen: Vec<_> = elide
        .iter()
        .copied()
        .filter(|(_, t)| t.name == name)
        .collect();
    if chosen.is_empty() {
        return Err(RunError::UnknownTask {
            file: job.file.clone(),
            name: name.to_owned(),
            known: elide
                .iter()
                .map(|(g, t)| format!("{} (group {})", t.name, g.name))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(chosen)
}

/// Runs the job. `interrupt` turns `true` on SIGINT/SIGTERM.
pub async fn run(opts: &RunOptions, interrupt: watch::Receiver<bool>) -> Result<Outcome, RunError> {
    let job = Job::from_file(&opts.job_file)?;
    for warning in &job.warnings {
        tracing::warn!("{}: {warning}", job.file.display());
    }
    let selected = select_tasks(&job, opts.task.as_deref())?;
    let agent_block = match &opts.agent_config {
        Some(file) => agent_config::plugin_config(file)?,
        None => agent_config::PluginBlock {
            label: agent_config::PLUGIN_LABEL,
            config: hcl::Body::default(),
        },
    };
    let work = tempfile::Builder::new()
        .prefix("elide-run-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .tempdir() // 0711: tasks run as `nobody` and pass through to their dirs
        .map_err(RunError::TempDir)?;
    let mut session = Session {
        plugin: None,
        daemon: None,
    };
    let result = run_in(
        opts,
        &job,
        &selected,
        agent_block,
        work.path(),
        &mut session,
        interrupt,
    )
    .await;
    session.close().await;
    let kept = if opts.keep_alloc {
        let path = work.keep();
        eprintln!(
            "elide-run: alloc directories kept in {}",
            path.join("allocs").display()
        );
        Some(path)
    } else {
        None
    };
    result.map(|tasks| Outcome { tasks, kept })
}
/// Processes to stop on every exit path.
struct Session {
    plugin: Option<PluginHost>,
    daemon: Option<PrivateDaemon>,
}

impl Session {
    async fn close(&mut self) {
        if let Some(plugin) = self.plugin.take() {
            plugin.shutdown().await;
        }
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
    }
}

fn rpc(call: impl Into<String>) -> impl FnOnce(tonic::Status) -> RunError {
    let call = call.into();
    move |status| RunError::Rpc {
        call,
        message: status.message().to_owned(),
    }
}

async fn bounded<T>(
    call: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RunError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(rpc(call)(status)),
        Err(_) => Err(RunError::Rpc {
            call: call.to_owned(),
            message: format!("no answer within {limit:?}"),
        }),
    }
}

struct Running {
    task: Task,
    id: String,
    stdout: FifoForwarder,
    stderr: FifoForwarder,
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    opts: &RunOptions,
    job: &Job,
    selected: &[(&Group, &Task)],
    agent_block: agent_config::PluginBlock,
    work: &Path,
    session: &mut Session,
    mut interrupt: watch::Receiver<bool>,
) -> Result<Vec<TaskOutcome>, RunError> {
    let socket_dir = work.join("plugin");
    std::fs::create_dir_all(&socket_dir).map_err(RunError::TempDir)?;
    let plugin = PluginHost::launch(&opts.plugin, &socket_dir).await?;
    tracing::debug!(pid = plugin.pid(), socket = %plugin.socket.display(), "plugin handshake done");
    let plugin = session.plugin.insert(plugin);
    let info = bounded(
        "PluginInfo",
        RPC_LIMIT,
        plugin.base.plugin_info(PluginInfoRequest {}),
    )
    .await?;
    if info.name != DRIVER_NAME {
        return Err(RunError::WrongPlugin {
            binary: opts.plugin.clone(),
            name: info.name,
        });
    }
    let api_version = info
        .plugin_api_versions
        .first()
        .cloned()
        .unwrap_or_else(|| "v0.1.0".into());

    // Plugin config: the agent block, pointed at a private daemon if needed.
    let config_file = opts
        .agent_config
        .as_ref()
        .map_or("built-in default".to_owned(), |f| f.display().to_string());
    let plugin_config_error = |error| RunError::PluginConfig {
        file: config_file.clone(),
        label: agent_block.label,
        error,
    };
    let schema = bounded(
        "ConfigSchema",
        RPC_LIMIT,
        plugin.base.config_schema(ConfigSchemaRequest {}),
    )
    .await?
    .spec
    .unwrap_or_default();
    let mut config = cty::body_to_value(&agent_block.config, &Context::new(), "config")
        .map_err(plugin_config_error)?;
    let configured = endpoint(&config);
    let reachable = match &configured {
        Endpoint::Unix(path) => daemon::unix_reachable(Path::new(path)).await,
        Endpoint::Tcp(address) => daemon::tcp_reachable(address).await,
    };
    if reachable {
        tracing::info!("using the daemon at {configured}");
    } else {
        let dir = work.join("daemon");
        std::fs::create_dir_all(&dir).map_err(RunError::TempDir)?;
        let private = PrivateDaemon::start(&opts.daemon, &dir).await?;
        tracing::info!(
            "no daemon answers at {configured}; started a private elide-daemon on {}",
            private.socket.display()
        );
        if let Some(object) = config.as_object_mut() {
            object.shift_remove("daemon_address");
            object.insert(
                "daemon_socket".into(),
                private.socket.display().to_string().into(),
            );
        }
        session.daemon = Some(private);
    }
    // The plugin's own state (its delete journal) stays in this run's work
    // dir unless the agent config names a directory.
    if let Some(object) = config.as_object_mut() {
        if !object.contains_key("driver_state_dir") {
            object.insert(
                "driver_state_dir".into(),
                work.join("driver-state").display().to_string().into(),
            );
        }
    }
    let plugin = session.plugin.as_mut().expect("plugin launched above");
    let msgpack_config = cty::encode(&schema, &config, "config").map_err(plugin_config_error)?;
    bounded(
        "SetConfig",
        RPC_LIMIT,
        plugin.base.set_config(SetConfigRequest {
            msgpack_config,
            nomad_config: Some(NomadConfig {
                driver: Some(NomadDriverConfig {
                    client_max_port: 14512,
                    client_min_port: 14000,
                    topology: None,
                }),
            }),
            plugin_api_version: api_version,
        }),
    )
    .await?;
    // Optional since Nomad 2.0.4; UNIMPLEMENTED is fine.
    if let Ok(Err(status)) =
        tokio::time::timeout(RPC_LIMIT, plugin.driver.init(InitRequest {})).await
    {
        if status.code() != tonic::Code::Unimplemented {
            return Err(rpc("Init")(status));
        }
    }
    wait_healthy(plugin, &mut interrupt).await?;
    follow_task_events(plugin);
    let task_schema = bounded(
        "TaskConfigSchema",
        RPC_LIMIT,
        plugin.driver.task_config_schema(TaskConfigSchemaRequest {}),
    )
    .await?
    .spec
    .unwrap_or_default();
    bounded(
        "Capabilities",
        RPC_LIMIT,
        plugin.driver.capabilities(CapabilitiesRequest {}),
    )
    .await?;

    // Prestart: dirs, FIFOs + readers, env, templates, config encoding.
    let allocs_root = work.join("allocs");
    let node_name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let node_id = uuid::Uuid::new_v4().to_string();
    let mut allocs: BTreeMap<String, (String, AllocDir, Vec<AssignedPort>)> = BTreeMap::new();
    let mut prepared = Vec::new();
    for (group, task) in selected {
        if !allocs.contains_key(&group.name) {
            let alloc_id = uuid::Uuid::new_v4().to_string();
            let dir = AllocDir::create(&allocs_root, &alloc_id)?;
            let ports = network::assign(&group.ports, |lo, hi| fastrand::u16(lo..=hi)).map_err(
                |problem| RunError::Ports {
                    group: group.name.clone(),
                    problem,
                },
            )?;
            for port in &ports {
                tracing::info!(
                    "group {}: port {:?} is {}:{}",
                    group.name,
                    port.label,
                    network::HOST_IP,
                    port.host_port
                );
            }
            allocs.insert(group.name.clone(), (alloc_id, dir, ports));
        }
        let (alloc_id, alloc, ports) = &allocs[&group.name];
        let task_dir = alloc.add_task(&task.name)?;
        let placement = Placement {
            job,
            group,
            task,
            alloc_id,
            alloc,
            task_dir: &task_dir,
            node_name: &node_name,
            node_id: &node_id,
            ports,
        };
        let task_env = env::build(std::env::vars(), &placement)?;
        for t in &task.templates {
            let path =
                template::write(t, &task_env, &task_dir.dir, &alloc.path).map_err(|error| {
                    RunError::Template {
                        task: task.name.clone(),
                        error,
                    }
                })?;
            tracing::debug!(task = %task.name, "rendered template {}", path.display());
        }
        let ctx = env::context(&task_env, &placement);
        let task_config_error = |error| RunError::TaskConfig {
            file: job.file.clone(),
            task: task.name.clone(),
            error,
        };
        let value = cty::body_to_value(&task.config, &ctx, "config").map_err(task_config_error)?;
        let msgpack = cty::encode(&task_schema, &value, "config").map_err(task_config_error)?;
        let config = task_config(
            job, group, task, alloc_id, alloc, &task_dir, task_env, msgpack, &node_name, &node_id,
        );
        prepared.push((task, task_dir, config));
    }
    if opts.keep_alloc {
        eprintln!("elide-run: alloc directories in {}", allocs_root.display());
    }
    if *interrupt.borrow() {
        return Err(RunError::Interrupted);
    }

    // Start every task (concurrently), each with its log readers.
    let mut starts = Vec::new();
    for (task, task_dir, config) in prepared {
        let stdout = FifoForwarder::start(&task_dir.stdout_fifo, &task.name, Sink::Stdout);
        let stderr = FifoForwarder::start(&task_dir.stderr_fifo, &task.name, Sink::Stderr);
        let mut driver = plugin.driver.clone();
        let id = config.id.clone();
        let call = format!("StartTask({})", task.name);
        starts.push(async move {
            let result = bounded(
                &call,
                RPC_LIMIT,
                driver.start_task(StartTaskRequest { task: Some(config) }),
            )
            .await;
            (
                Running {
                    task: (*task).clone(),
                    id,
                    stdout,
                    stderr,
                },
                result,
            )
        });
    }
    let mut running = Vec::new();
    let mut failure = None;
    for (task, result) in futures::future::join_all(starts).await {
        match result {
            Ok(_) => {
                tracing::info!("task {} started", task.task.name);
                running.push(task);
            }
            Err(e) => {
                task.stdout.finish(Duration::ZERO);
                task.stderr.finish(Duration::ZERO);
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(error) = failure {
        // Nomad would not restart a task whose start failed on bad config;
        // stop the ones that did start.
        let mut interrupt = watch::channel(true).1;
        let _ = supervise(plugin, job.job_type, running, &mut interrupt).await;
        return Err(error);
    }
    Ok(supervise(plugin, job.job_type, running, &mut interrupt).await)
}

/// Waits for every task to exit; on interrupt stops the rest with their
/// `kill_signal`/`kill_timeout`. Always destroys every task.
async fn supervise(
    plugin: &mut PluginHost,
    job_type: JobType,
    running: Vec<Running>,
    interrupt: &mut watch::Receiver<bool>,
) -> Vec<TaskOutcome> {
    let mut waits: futures::stream::FuturesUnordered<_> = running
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut driver = plugin.driver.clone();
            let id = r.id.clone();
            async move {
                let result = driver
                    .wait_task(WaitTaskRequest { task_id: id })
                    .await
                    .map(tonic::Response::into_inner);
                (i, result)
            }
        })
        .collect();
    let mut outcomes: Vec<Option<i32>> = vec![None; running.len()];
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    while !waits.is_empty() {
        tokio::select! {
            Some((i, result)) = waits.next() => {
                let r = &running[i];
                let code = exit_code(&r.task.name, result);
                outcomes[i] = Some(code);
                if job_type == JobType::Service && stop_deadline.is_none() {
                    tracing::warn!(
                        "service task {} exited with code {code}; Nomad would restart it under the group's restart policy, elide-run does not",
                        r.task.name
                    );
                } else {
                    tracing::info!("task {} exited with code {code}", r.task.name);
                }
            }
            _ = interrupt.wait_for(|v| *v), if stop_deadline.is_none() => {
                let longest = running.iter().map(|r| r.task.kill_timeout).max().unwrap_or_default();
                stop_deadline = Some(tokio::time::Instant::now() + longest + STOP_MARGIN);
                tracing::info!("stopping {} task(s)", outcomes.iter().filter(|o| o.is_none()).count());
                let stops = running.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|(r, _)| {
                    let mut driver = plugin.driver.clone();
                    let request = StopTaskRequest {
                        task_id: r.id.clone(),
                        timeout: Some(elide_proto::duration_to_proto(r.task.kill_timeout)),
                        signal: r.task.kill_signal.clone(),
                    };
                    let limit = r.task.kill_timeout + STOP_MARGIN;
                    let name = r.task.name.clone();
                    async move {
                        if let Err(e) = bounded(&format!("StopTask({name})"), limit, driver.stop_task(request)).await {
                            tracing::warn!("{e}");
                        }
                    }
                });
                // Nomad waits for WaitTask after StopTask; the stops run
                // concurrently while the waits below keep being polled.
                tokio::spawn(futures::future::join_all(stops.collect::<Vec<_>>()));
            }
            _ = sleep_until(stop_deadline) => {
                tracing::warn!("tasks did not report their exit in time after StopTask; destroying them");
                break;
            }
        }
    }
    let mut result = Vec::new();
    for (r, code) in running.into_iter().zip(outcomes) {
        // As Nomad: DestroyTask after the exit, then logmon waits for EOF.
        if let Err(e) = bounded(
            &format!("DestroyTask({})", r.task.name),
            RPC_LIMIT,
            plugin.driver.destroy_task(DestroyTaskRequest {
                task_id: r.id.clone(),
                force: true,
            }),
        )
        .await
        {
            tracing::warn!("{e}");
        }
        let (out, err) = (r.stdout, r.stderr);
        let drained = tokio::task::spawn_blocking(move || {
            let stdout_done = out.finish(OUTPUT_DRAIN_LIMIT);
            stdout_done & err.finish(OUTPUT_DRAIN_LIMIT)
        })
        .await
        .unwrap_or(false);
        if !drained {
            tracing::debug!(
                "task {}: output FIFO not closed by the driver in time",
                r.task.name
            );
        }
        result.push(TaskOutcome {
            task: r.task.name,
            exit_code: code.unwrap_or(1),
        });
    }
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn exit_code(task: &str, result: Result<WaitTaskResponse, tonic::Status>) -> i32 {
    match result {
        Err(status) => {
            tracing::error!("WaitTask({task}) failed: {}", status.message());
            1
        }
        Ok(response) => {
            let r = response.result.unwrap_or_default();
            if !response.err.is_empty() {
                tracing::error!("task {task}: {}", response.err);
            }
            if r.oom_killed {
                tracing::error!("task {task} was killed for exceeding its memory limit");
            }
            if r.exit_code != 0 {
                r.exit_code
            } else if r.signal != 0 {
                128 + r.signal
            } else if !response.err.is_empty() {
                1
            } else {
                0
            }
        }
    }
}

/// Waits for the first HEALTHY fingerprint, keeping the stream open
/// afterwards (as Nomad's driver manager does).
async fn wait_healthy(
    plugin: &mut PluginHost,
    interrupt: &mut watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut stream = bounded(
        "Fingerprint",
        RPC_LIMIT,
        plugin.driver.fingerprint(FingerprintRequest {}),
    )
    .await?;
    let mut description = "no fingerprint received".to_owned();
    let deadline = tokio::time::Instant::now() + HEALTHY_LIMIT;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(f)) if f.health == HealthState::Healthy as i32 => {
                    tracing::debug!("driver healthy: {}", f.health_description);
                    tokio::spawn(async move { while stream.next().await.is_some() {} });
                    return Ok(());
                }
                Some(Ok(f)) => {
                    description = if f.err.is_empty() { f.health_description } else { f.err };
                    tracing::debug!("driver not healthy yet: {description}");
                }
                Some(Err(status)) => return Err(rpc("Fingerprint")(status)),
                None => return Err(RunError::Rpc { call: "Fingerprint".into(), message: "stream ended".into() }),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(RunError::Unhealthy { limit: HEALTHY_LIMIT, description });
            }
            _ = interrupt.wait_for(|v| *v) => return Err(RunError::Interrupted),
        }
    }
}

/// Logs the driver's task events (Nomad shows them as task events).
fn follow_task_events(plugin: &PluginHost) {
    let mut driver = plugin.driver.clone();
    tokio::spawn(async move {
        let Ok(response) = driver.task_events(TaskEventsRequest {}).await else {
            return;
        };
        let mut stream = response.into_inner();
        while let Some(Ok(event)) = stream.next().await {
            tracing::info!("task {}: driver event: {}", event.task_name, event.message);
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn task_config(
    job: &Job,
    group: &Group,
    task: &Task,
    alloc_id: &str,
    alloc: &AllocDir,
    task_dir: &TaskDir,
    env: BTreeMap<String, String>,
    msgpack: Vec<u8>,
    node_name: &str,
    node_id: &str,
) -> TaskConfig {
    let r = &task.resources;
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect();
    TaskConfig {
        id: format!("{alloc_id}/{}/{suffix}", task.name),
        name: task.name.clone(),
        msgpack_driver_config: msgpack,
        env,
        resources: Some(Resources {
            allocated_resources: Some(AllocatedTaskResources {
                cpu: Some(AllocatedCpuResources {
                    cpu_shares: r.cpu_mhz,
                }),
                memory: Some(AllocatedMemoryResources {
                    memory_mb: r.memory_mb,
                    memory_max_mb: r.memory_max_mb,
                }),
                networks: Vec::new(),
            }),
            linux_resources: Some(LinuxResources {
                cpu_shares: r.cpu_mhz,
                memory_limit_bytes: r.memory_mb.max(r.memory_max_mb) * 1024 * 1024,
                ..Default::default()
            }),
            ports: Vec::new(),
        }),
        user: task.user.clone(),
        alloc_dir: alloc.path.display().to_string(),
        stdout_path: task_dir.stdout_fifo.display().to_string(),
        stderr_path: task_dir.stderr_fifo.display().to_string(),
        task_group_name: group.name.clone(),
        job_name: job.name.clone(),
        job_id: job.id.clone(),
        alloc_id: alloc_id.to_owned(),
        namespace: job.namespace.clone(),
        node_name: node_name.to_owned(),
        node_id: node_id.to_owned(),
        ..Default::default()
    }
}

/// Where the plugin config points.
enum Endpoint {
    Unix(String),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{p}"),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

fn endpoint(config: &hcl::Value) -> Endpoint {
    let get = |key| {
        config
            .as_object()
            .and_then(|o| o.get(key))
            .and_then(hcl::Value::as_str)
    };
    match (get("daemon_socket"), get("daemon_address")) {
        (_, Some(address)) => Endpoint::Tcp(address.to_owned()),
        (Some(socket), None) => Endpoint::Unix(socket.to_owned()),
        (None, None) => Endpoint::Unix(DEFAULT_DAEMON_SOCKET.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> Job {
        Job::parse(Path::new("j.nomad"), text).unwrap()
    }

    #[test]
    fn selects_elide_tasks_or_explains_why_not() {
        let j = job(r#"job "j" {
              group "a" {
                task "py" {
                  driver = "elide"
                }
                task "web" {
                  driver = "docker"
                }
              }
              group "b" {
                task "js" {
                  driver = "elide"
                }
              }
            }"#);
        let names =
            |v: Vec<(&Group, &Task)>| v.iter().map(|(_, t)| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(select_tasks(&j, None).unwrap()), ["py", "js"]);
        assert_eq!(names(select_tasks(&j, Some("js")).unwrap()), ["js"]);
        let e = select_tasks(&j, Some("web")).unwrap_err().to_string();
        assert_eq!(
            e,
            "j.nomad: no elide task named \"web\"; elide tasks: py (group a), js (group b)"
        );
        let j =
            job("job \"j\" {\n group \"a\" {\n task \"web\" {\n driver = \"docker\"\n }\n }\n }");
        let e = select_tasks(&j, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "j.nomad: no task uses driver = \"elide\" (tasks: web (driver \"docker\"))"
        );
    }

    #[test]
    fn exit_codes_follow_the_wait_result() {
        use elide_proto::hashicorp::nomad::plugins::drivers::proto::ExitResult;
        let ok = |exit_code, signal, err: &str| {
            Ok(WaitTaskResponse {
                result: Some(ExitResult {
                    exit_code,
                    signal,
                    oom_killed: false,
                }),
                err: err.into(),
            })
        };
        assert_eq!(exit_code("t", ok(3, 0, "")), 3);
        assert_eq!(exit_code("t", ok(0, 15, "")), 143);
        assert_eq!(exit_code("t", ok(0, 0, "boom")), 1);
        assert_eq!(exit_code("t", ok(0, 0, "")), 0);
        assert_eq!(exit_code("t", Err(tonic::Status::not_found("x"))), 1);
        let outcome = Outcome {
            tasks: vec![
                TaskOutcome {
                    task: "a".into(),
                    exit_code: 0,
                },
                TaskOutcome {
                    task: "b".into(),
                    exit_code: 3,
                },
                TaskOutcome {
                    task: "c".into(),
                    exit_code: 4,
                },
            ],
            kept: None,
        };
        assert_eq!(outcome.exit_code(), 3);
    }
}
