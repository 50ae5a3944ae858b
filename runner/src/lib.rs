//! `elide-run`: runs Nomad job files locally the way a Nomad client runs
//! their `driver = "elide"` tasks, through the real `nomad-driver-elide`
//! plugin binary (go-plugin handshake, gRPC) and a real `elide-daemon`.
//!
//! The reusable "Nomad host" parts:
//! * `jobspec`: job files (HCL, `hcl-rs`);
//! * `agent_config`: the plugin block of an agent config file;
//! * `plugin_host`: launching and stopping the plugin as go-plugin does;
//! * config bodies are encoded with the plugin's schema by `elide_cty`;
//! * `alloc`: alloc and task directories, log FIFOs;
//! * `env`: the task environment (`NOMAD_*` and the `env` block);
//! * `network`: a group's ports and their `NOMAD_PORT_*` variables;
//! * `template`: `template` blocks with literal data;
//! * `logmon`: task output from the FIFOs, prefixed by task name;
//! * `daemon`: reaching the daemon or starting a private one;
//! * `run`: the orchestration.

#![warn(missing_docs)]

mod agent_config;
mod alloc;
mod daemon;
mod env;
mod jobspec;
mod logmon;
mod network;
mod plugin_host;
mod prestart;
mod run;
mod run_error;
mod task_lifecycle;
mod template;

pub use agent_config::parse as parse_agent_config;
pub use run::{run as run_job, Outcome, RunError, RunOptions};
pub use task_lifecycle::TaskOutcome;
