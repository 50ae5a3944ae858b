//! `TaskHandle.driver_state`: everything `RecoverTask` needs to find a task
//! again, with no other input (Nomad hands it back verbatim; after an agent
//! restart `msgpack_driver_config` is empty, so nothing may come from there).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Schema version written into `TaskHandle.version`.
pub const DRIVER_STATE_VERSION: i32 = 1;

/// What is persisted per task start. JSON-encoded: readable in Nomad's state
/// DB when debugging, and new optional fields stay backwards compatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverState {
    /// The daemon the execution was submitted to (`unix:/path` or
    /// `tcp:host:port`), so recovery finds it even if the plugin
    /// configuration changed since. Absent in handles written before it
    /// was recorded: then the configured daemon is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// The daemon session the execution lives in.
    pub session_id: String,
    /// The execution id (derived from the task id).
    pub execution_id: String,
    /// The daemon instance that accepted the execution.
    pub daemon_instance_id: String,
    /// Nomad's stdout FIFO (or `/dev/null`).
    pub stdout_path: String,
    /// Nomad's stderr FIFO (or `/dev/null`).
    pub stderr_path: String,
    /// The task directory (`<alloc_dir>/<task>`), the program's working dir.
    pub task_dir: PathBuf,
    /// Where the output forwarder persists the offsets it has written.
    pub offsets_file: PathBuf,
    /// When the task was started, seconds since the Unix epoch.
    pub started_at_unix: i64,
}

/// Why a `driver_state` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DriverStateError {
    /// Written by a schema this build does not know.
    #[error("driver_state version {0} is not supported (this driver writes version {DRIVER_STATE_VERSION})")]
    Version(i32),
    /// Not decodable.
    #[error("driver_state is not valid: {0}")]
    Malformed(String),
}

impl DriverState {
    /// Encodes for `TaskHandle.driver_state`.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a handle's `driver_state` written with schema `version`.
    pub fn decode(version: i32, bytes: &[u8]) -> Result<Self, DriverStateError> {
        if version != DRIVER_STATE_VERSION {
            return Err(DriverStateError::Version(version));
        }
        serde_json::from_slice(bytes).map_err(|e| DriverStateError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_version() {
        let state = DriverState {
            daemon: Some("unix:/run/elide/daemon.sock".into()),
            session_id: "nomad-abc-def".into(),
            execution_id: "a.b.c".into(),
            daemon_instance_id: "i".into(),
            stdout_path: "/alloc/logs/.t.stdout.fifo".into(),
            stderr_path: "/dev/null".into(),
            task_dir: "/alloc/t".into(),
            offsets_file: "/alloc/t/private/x".into(),
            started_at_unix: 1,
        };
        let bytes = state.encode();
        assert_eq!(DriverState::decode(1, &bytes).unwrap(), state);
        assert!(matches!(
            DriverState::decode(2, &bytes),
            Err(DriverStateError::Version(2))
        ));
        assert!(matches!(
            DriverState::decode(1, b"{"),
            Err(DriverStateError::Malformed(_))
        ));
    }

    #[test]
    fn handles_without_the_daemon_still_decode() {
        let old = br#"{"session_id":"s","execution_id":"e","daemon_instance_id":"i","stdout_path":"/dev/null","stderr_path":"/dev/null","task_dir":"/a/t","offsets_file":"/a/t/private/o","started_at_unix":1}"#;
        let state = DriverState::decode(1, old).unwrap();
        assert_eq!(state.daemon, None);
        assert_eq!(state.execution_id, "e");
    }
}
