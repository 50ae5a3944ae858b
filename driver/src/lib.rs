//! `nomad-driver-elide`: a Nomad task-driver plugin that runs Python and
//! JavaScript snippets in the node's shared Elide execution daemon.
//!
//! Layout:
//! * process contract: [`launch`] (environment, socket; the handshake line
//!   is `elide_proto::handshake`),
//!   [`logging`] (hclog JSON on stderr), [`shutdown`];
//! * configuration: [`plugin_config`] (agent `plugin` block),
//!   [`task_config`] (task `config` block), [`script`] (loading a task's
//!   script safely), built on `elide_cty` (Nomad's msgpack encoding),
//!   [`hclspec`] (schema builders); durations, the languages and the
//!   intrinsics it knows come from `elide_proto`, shared with the daemon;
//! * driver state: [`driver`], with daemon health from [`probe`] and,
//!   when configured, the daemon started and restarted by [`supervision`];
//! * the daemon: [`daemon_link`] (transport seam, deadlines, keepalive,
//!   session and execution naming) and [`tasks`] (the task lifecycle);
//! * Nomad-facing gRPC: [`grpc`], with Nomad's error details from
//!   `elide_proto::recoverable`.

#![warn(missing_docs)]

pub mod daemon_link;
pub mod driver;
#[cfg(feature = "fault-switch")]
pub mod fault_switch;
pub mod grpc;
mod hclspec;
pub mod host;
pub mod launch;
pub mod logging;
pub mod plugin_config;
pub mod probe;
mod script;
pub mod shutdown;
mod supervision;
pub mod task_config;
pub mod tasks;

/// Whether the test-only [`fault_switch`] breaks the driver in this way
/// now; always `false` (and free) without the `fault-switch` feature.
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
