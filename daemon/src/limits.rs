//! Every limit the daemon enforces, in one place, with its default.

use std::time::Duration;

/// Limits of one daemon. Each is explicit: nothing is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest snippet source accepted, in bytes.
    pub max_code_bytes: u64,
    /// Most program arguments.
    pub max_args: u32,
    /// Largest single argument, in bytes.
    pub max_arg_bytes: u64,
    /// Most environment variables.
    pub max_env_vars: u32,
    /// Largest environment (keys plus values), in bytes.
    pub max_env_bytes: u64,
    /// Most sessions at once.
    pub max_sessions: u32,
    /// Most executions running at once, over all sessions.
    pub max_running_executions: u32,
    /// Most executions waiting for a run slot, over all sessions.
    pub max_queued_executions: u32,
    /// Finished executions kept per session; the oldest are forgotten first.
    pub max_retained_executions_per_session: u32,
    /// Output kept per execution and stream; older bytes are dropped with an
    /// explicit marker.
    pub output_retention_bytes_per_stream: u64,
    /// Status events kept per session for resuming watchers.
    pub max_events_retained_per_session: u32,
    /// Largest data field of one output chunk.
    pub max_output_chunk_bytes: u32,
    /// Longest grace a cancel may ask for before SIGKILL.
    pub max_cancel_grace: Duration,
    /// Grace between SIGTERM and SIGKILL when an execution times out.
    pub timeout_grace: Duration,
    /// Grace used by cancel when the request leaves it unset.
    pub default_cancel_grace: Duration,
    /// Idle time after which a session is deleted, when its config leaves it unset.
    pub default_session_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_code_bytes: 1024 * 1024,
            max_args: 256,
            max_arg_bytes: 64 * 1024,
            max_env_vars: 1024,
            max_env_bytes: 1024 * 1024,
            max_sessions: 256,
            max_running_executions: 1024,
            max_queued_executions: 4096,
            max_retained_executions_per_session: 1024,
            output_retention_bytes_per_stream: 8 * 1024 * 1024,
            max_events_retained_per_session: 16 * 1024,
            max_output_chunk_bytes: 64 * 1024,
            max_cancel_grace: Duration::from_secs(300),
            timeout_grace: Duration::from_secs(2),
            default_cancel_grace: Duration::from_secs(5),
            default_session_idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl Limits {
    /// Checks that the limits fit together; the error names the limit.
    pub fn validate(&self) -> Result<(), String> {
        // Backpressure pauses at half the retention; one read appends up to
        // a chunk, so retention must hold two chunks for nothing a follower
        // has not received to be pushed out.
        let min_retention = 2 * u64::from(self.max_output_chunk_bytes);
        if self.output_retention_bytes_per_stream < min_retention {
            return Err(format!(
                "output retention per stream is {} bytes; it must be at least {min_retention} (two output chunks)",
                self.output_retention_bytes_per_stream
            ));
        }
        if self.max_running_executions == 0 || self.max_sessions == 0 {
            return Err("max_running_executions and max_sessions must be at least 1".into());
        }
        Ok(())
    }

    /// The limits as the API reports them.
    pub fn to_proto(&self) -> elide_proto::elide::daemon::v1::DaemonLimits {
        use elide_proto::duration_to_proto;
        elide_proto::elide::daemon::v1::DaemonLimits {
            max_code_bytes: self.max_code_bytes,
            max_args: self.max_args,
            max_arg_bytes: self.max_arg_bytes,
            max_env_vars: self.max_env_vars,
            max_env_bytes: self.max_env_bytes,
            max_sessions: self.max_sessions,
            max_running_executions: self.max_running_executions,
            max_queued_executions: self.max_queued_executions,
            max_retained_executions_per_session: self.max_retained_executions_per_session,
            output_retention_bytes_per_stream: self.output_retention_bytes_per_stream,
            max_events_retained_per_session: self.max_events_retained_per_session,
            max_output_chunk_bytes: self.max_output_chunk_bytes,
            max_cancel_grace: Some(duration_to_proto(self.max_cancel_grace)),
            timeout_grace: Some(duration_to_proto(self.timeout_grace)),
            default_session_idle_timeout: Some(duration_to_proto(
                self.default_session_idle_timeout,
            )),
        }
    }
}
