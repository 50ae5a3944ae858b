//! Why a lifecycle operation failed, and how daemon errors map onto it.

use crate::daemon_link::CallError;

/// Why a lifecycle operation failed. The service maps each to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// `SetConfig` was never called.
    #[error("{}", super::NOT_CONFIGURED)]
    NotConfigured,
    /// The task's configuration is wrong; restarting will not help.
    #[error("{0}")]
    InvalidConfig(String),
    /// The daemon failed or could not be reached; `recoverable` says
    /// whether Nomad restarting the task may help.
    #[error("{message}")]
    Daemon {
        /// What happened.
        message: String,
        /// Whether a retry may succeed.
        recoverable: bool,
    },
    /// `StartTask` for a task id that is already running.
    #[error("task with ID {0:?} already started")]
    AlreadyStarted(String),
    /// Unknown task id, or the workload is gone.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the task's state.
    #[error("{0}")]
    Precondition(String),
}

pub(super) fn daemon_error(context: &str, target: &str, e: &CallError) -> TaskError {
    let message = if e.is_transport() {
        format!("{context}: daemon not reachable at {target}: {e}")
    } else {
        format!("{context}: {e}")
    };
    let recoverable = !matches!(
        e.code(),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied
    );
    TaskError::Daemon {
        message,
        recoverable,
    }
}

pub(super) fn unknown_task(task_id: &str) -> TaskError {
    TaskError::NotFound(format!("task {task_id:?} is not known to the elide driver"))
}
