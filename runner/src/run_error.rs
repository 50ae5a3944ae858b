//! Why a run of `elide-run` failed before its tasks ran to an exit code.

use std::path::PathBuf;
use std::time::Duration;

use elide_cty::CtyError;
use elide_nomad_client::LaunchError;

use crate::agent_config::AgentConfigError;
use crate::alloc::AllocError;
use crate::daemon::DaemonError;
use crate::env::EnvError;
use crate::jobspec::JobError;
use crate::jobspec::DRIVER_NAME;
use crate::template::TemplateError;

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
    Plugin(#[from] LaunchError),
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

/// Deadline of short RPCs (schemas, SetConfig, StartTask, DestroyTask).
pub const RPC_LIMIT: Duration = Duration::from_secs(30);

/// Maps a failed plugin call to the run's error.
pub(crate) fn rpc(call: impl Into<String>) -> impl FnOnce(tonic::Status) -> RunError {
    let call = call.into();
    move |status| RunError::Rpc {
        call,
        message: status.message().to_owned(),
    }
}

/// A plugin call with a deadline, its failure or silence as the run's
/// error.
pub(crate) async fn bounded<T>(
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
