//! The Nomad client's side of the task-driver plugin protocol, written once
//! for every client in this project: `elide-run`, the end-to-end harness and
//! the simulation's fake agent.
//!
//! * `launch`: starting a plugin binary as go-plugin does under Nomad (the
//!   environment, the handshake line, the unix socket, the `"plugin"`
//!   health check) and stopping it as `Client.Kill` does;
//! * `configure`: the driver manager's `SetConfig` (with the client's
//!   `NomadConfig`) and the optional `Init`;
//! * `task_config`: the `TaskConfig` a task runner sends to `StartTask`;
//! * `outcome`: what a `WaitTask` result means to a process that ran the
//!   task (its exit code), and Nomad's reading of a plugin error's
//!   `RecoverableError` detail.
//!
//! The plugin's side of the same contracts (the handshake line it writes,
//! the error detail it attaches) lives in `elide_proto`; the readers here
//! are written from Nomad's code, not from the plugin's writers, so a bug
//! shared by both sides shows.
//!
//! Every module is private; the public surface is the list below.

#![warn(missing_docs)]

mod configure;
mod launch;
mod outcome;
mod task_config;

pub use configure::{
    api_version, init, set_config_request, CLIENT_MAX_PORT, CLIENT_MIN_PORT,
    DEFAULT_PLUGIN_API_VERSION,
};
pub use launch::{
    dial_unix, LaunchError, PluginProcess, CONNECT_LIMIT, EXIT_GRACE, HANDSHAKE_LIMIT,
};
pub use outcome::{exit_code, recoverable};
pub use task_config::{TaskResources, TaskSpec};
