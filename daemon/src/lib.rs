//! The reference Elide execution daemon.
//!
//! It serves the `elide.daemon.v1` API (see `proto/README.md`) and really
//! runs snippets. The crate is layered so that the state machine can be
//! tested, and simulated, without processes or sockets:
//!
//! * [`registry`]: sessions, executions, events and the API operations;
//! * [`supervisor`]: drives one execution (slots, timeout, stop, memory);
//! * [`runtime`]: the seam that starts programs ([`runtime::process`] is the
//!   real one); [`cgroup`]: its per-execution cgroups (v1 and v2);
//! * [`store`]: durable state; [`output`], [`events`]: retained output and
//!   status logs; [`session`]: the narrowing rules;
//! * [`service`]: the gRPC translation; [`v1alpha1`]: the original
//!   contract over the same registry; [`server`]: listeners;
//!   [`authority`]: lets clients that send a socket path as `:authority`
//!   in.

pub mod authority;
pub mod cgroup;
pub mod client;
mod command_stream;
pub mod elide_apis;
pub mod error;
pub mod events;
pub mod ids;
pub mod intrinsics;
pub mod language;
pub mod limits;
pub mod output;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod service;
pub mod session;
pub mod signal;
pub mod store;
pub mod supervisor;
pub mod time;
pub mod v1alpha1;
