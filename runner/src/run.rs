//! Running a job file the way a Nomad client would run its `elide` tasks:
//! plugin launch and configuration, a healthy fingerprint, alloc and task
//! directories, templates, `StartTask`, output through the log FIFOs,
//! `WaitTask`, `StopTask` on interruption, `DestroyTask`, and cleanup on
//! every path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::base::proto::{ConfigSchemaRequest, PluginInfoRequest};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    CapabilitiesRequest, StartTaskRequest, TaskConfigSchemaRequest,
};
use hcl::eval::Context;
use tokio::sync::watch;

use crate::agent_config;
use crate::daemon::{self, PrivateDaemon};
use crate::jobspec::DRIVER_NAME;
use crate::jobspec::{Group, Job, Task};
use crate::logmon::{FifoForwarder, Sink};
use crate::plugin_host::PluginHost;
use crate::prestart::{self, PreparedTask, Prestart};
pub use crate::run_error::RunError;
use crate::run_error::{bounded, rpc, RPC_LIMIT};
use crate::task_lifecycle::TaskOutcome;
use crate::task_lifecycle::{follow_task_events, follow_tasks, wait_healthy, Running};

/// The daemon socket the plugin uses when its config names none.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/elide/daemon.sock";

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
    let inputs = RunInputs {
        opts,
        job: &job,
        selected: &selected,
        work: work.path(),
    };
    let result = run_in(inputs, agent_block, &mut session, interrupt).await;
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

/// What one run works from.
#[derive(Clone, Copy)]
struct RunInputs<'a> {
    opts: &'a RunOptions,
    job: &'a Job,
    selected: &'a [(&'a Group, &'a Task)],
    /// The run's private work directory.
    work: &'a Path,
}

async fn run_in(
    inputs: RunInputs<'_>,
    agent_block: agent_config::PluginBlock,
    session: &mut Session,
    mut interrupt: watch::Receiver<bool>,
) -> Result<Vec<TaskOutcome>, RunError> {
    let RunInputs {
        opts,
        job,
        selected,
        work,
    } = inputs;
    let socket_dir = work.join("plugin");
    std::fs::create_dir_all(&socket_dir).map_err(RunError::TempDir)?;
    let plugin = PluginHost::launch(&opts.plugin, &socket_dir).await?;
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
    let api_version = elide_nomad_client::api_version(&info);

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
    let mut config = elide_cty::body_to_value(&agent_block.config, &Context::new(), "config")
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
    let msgpack_config =
        elide_cty::encode(&schema, &config, "config").map_err(plugin_config_error)?;
    bounded(
        "SetConfig",
        RPC_LIMIT,
        plugin
            .base
            .set_config(elide_nomad_client::set_config_request(
                msgpack_config,
                api_version,
                None,
            )),
    )
    .await?;
    if let Ok(Err(status)) =
        tokio::time::timeout(RPC_LIMIT, elide_nomad_client::init(&mut plugin.driver)).await
    {
        return Err(rpc("Init")(status));
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
    let prepared = prestart::prepare(&Prestart {
        job,
        selected,
        allocs_root: &allocs_root,
        task_schema: &task_schema,
    })?;
    if opts.keep_alloc {
        eprintln!("elide-run: alloc directories in {}", allocs_root.display());
    }
    if *interrupt.borrow() {
        return Err(RunError::Interrupted);
    }

    // Start every task (concurrently), each with its log readers.
    let mut starts = Vec::new();
    for PreparedTask { task, dir, config } in prepared {
        let stdout = FifoForwarder::start(&dir.stdout_fifo, &task.name, Sink::Stdout);
        let stderr = FifoForwarder::start(&dir.stderr_fifo, &task.name, Sink::Stderr);
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
        let _ = follow_tasks(plugin, job.job_type, running, &mut interrupt).await;
        return Err(error);
    }
    Ok(follow_tasks(plugin, job.job_type, running, &mut interrupt).await)
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
    fn the_run_exits_with_the_first_failing_tasks_code() {
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
