//! `nomad-driver-elide`: a Nomad task-driver plugin that runs Python and
//! JavaScript snippets in the node's shared Elide execution daemon.
//!
//! Layout:
//! * process contract: `launch` (environment, socket; the handshake line
//!   is `elide_proto::handshake`),
//!   `logging` (hclog JSON on stderr), `shutdown`;
//! * configuration: `plugin_config` (agent `plugin` block),
//!   `task_config` (task `config` block), `script` (loading a task's
//!   script safely), built on `elide_cty` (Nomad's msgpack encoding),
//!   `hclspec` (schema builders); durations, the languages and the
//!   intrinsics it knows come from `elide_proto`, shared with the daemon;
//! * driver state: `driver`, with daemon health from `probe` and,
//!   when configured, the daemon started and restarted by `supervision`;
//! * the daemon: `daemon_link` (transport seam, deadlines, keepalive,
//!   session and execution naming) and `tasks` (the task lifecycle);
//! * Nomad-facing gRPC: `grpc`, with Nomad's error details from
//!   `elide_proto::recoverable`.

#![warn(missing_docs)]

mod backoff;
mod daemon_link;
mod driver;
#[cfg(feature = "fault-switch")]
pub mod fault_switch;
mod grpc;
mod hclspec;
mod host;
mod launch;
mod logging;
mod plugin_config;
mod probe;
mod script;
mod shutdown;
mod supervision;
mod task_config;
mod tasks;

pub use daemon_link::identity::execution_id;
pub use daemon_link::{BoxedIo, Dialer, DialerFactory, DEFAULT_CALL_TIMEOUT, HEARTBEAT_TIMEOUT};
pub use driver::ElideDriver;
pub use grpc::{serve, BasePluginService, DriverService, FINGERPRINT_INTERVAL};
pub use host::{Host, HostUser, LogSinks, LogWriter, StateFiles, TaskUsers, WallClock};
pub use launch::{check_environment, handshake_line, socket_dir, PluginSocket};
pub use logging::init_stderr as init_stderr_logging;
pub use plugin_config::schema as plugin_config_schema;
pub use plugin_config::{
    DaemonCommand, DaemonEndpoint, PluginConfig, StatusMode, UserPolicy, DEFAULT_DAEMON_SOCKET,
};
pub use probe::{ApiProbe, AttributeValue, DaemonHealth};
pub use shutdown::Shutdown;
pub use task_config::schema as task_config_schema;
pub use task_config::{ElideTaskConfig, TaskSource};
pub use tasks::{
    TaskError, DESTROY_WAIT_LIMIT, FORCE_DELETE_TIMEOUT, OUTPUT_FLUSH_LIMIT, REAP_MAX_DELAY,
};

/// Whether the test-only [`fault_switch`] breaks the driver in this way
/// now; always `false` (and free) without the `fault-switch` feature.
/// The text of log lines operators search for, each with one home (the
/// simulation holds them to the facts).
pub mod log_lines {
    pub use crate::tasks::log_lines::{DELETE_DONE, DELETE_RETRYING, EXECUTION_EXISTED};
}

#[macro_export]
#[doc(hidden)]
macro_rules! broken {
    ($breakage:ident) => {{
        #[cfg(feature = "fault-switch")]
        let broken = $crate::fault_switch::is($crate::fault_switch::Breakage::$breakage);
        #[cfg(not(feature = "fault-switch"))]
        let broken = false;
        broken
    }};
}
