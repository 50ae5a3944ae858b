//! Errors of the daemon core and how they map onto gRPC status codes.

use crate::runtime::RuntimeError;
use crate::store::StoreError;

/// A request the daemon cannot serve, with the reason a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The named session or execution does not exist (in this session).
    #[error("{0}")]
    NotFound(String),
    /// An id is taken by something different from what was asked.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request itself is malformed or asks for more than allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is fine but the daemon's state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A daemon limit (sessions, queue, …) is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Persisting state failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The runtime failed in a way the caller cannot fix.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
}

impl From<crate::signal::SignalNameError> for DaemonError {
    fn from(err: crate::signal::SignalNameError) -> Self {
        DaemonError::InvalidArgument(err.to_string())
    }
}

/// Result type of the daemon core.
pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

impl From<DaemonError> for tonic::Status {
    fn from(err: DaemonError) -> Self {
        use tonic::Code;
        let code = match &err {
            DaemonError::NotFound(_) => Code::NotFound,
            DaemonError::AlreadyExists(_) => Code::AlreadyExists,
            DaemonError::InvalidArgument(_) => Code::InvalidArgument,
            DaemonError::FailedPrecondition(_) => Code::FailedPrecondition,
            DaemonError::ResourceExhausted(_) => Code::ResourceExhausted,
            DaemonError::Store(_) | DaemonError::Runtime(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}
