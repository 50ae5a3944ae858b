//! The reference Elide execution daemon.
//!
//! It serves the `elide.daemon.v1` API (see `proto/README.md`) and really
//! runs snippets. The crate is layered so that the state machine can be
//! tested, and simulated, without processes or sockets:
//!
//! * `registry`: sessions, executions, events and the API operations;
//! * `execution_run`: drives one execution (slots, timeout, stop, memory);
//! * `runtime`: the seam that starts programs (`runtime::process` is the
//!   real one); `cgroup`: its per-execution cgroups (v1 and v2);
//! * `store`: durable state; `output`, `events`: retained output and
//!   status logs; `session`: the narrowing rules;
//! * `prometheus`: the metrics `--metrics-listen` serves;
//!   `request_counts`: requests by method;
//! * `service`: the gRPC translation; `v1alpha1`: the original
//!   contract over the same registry; `server`: listeners;
//!   `authority`: lets clients that send a socket path as `:authority`
//!   in.
//!
//! Every module is private; what other crates use is re-exported below,
//! so the compiler sees dead code and the public surface is this list.

mod authority;
mod cgroup;
mod client;
mod command_stream;
mod elide_apis;
mod error;
mod events;
mod execution_run;
mod ids;
mod intrinsics;
mod language;
mod limits;
mod output;
mod peer;
mod prometheus;
mod registry;
mod request_counts;
mod runtime;
mod server;
mod service;
mod session;
mod signal;
mod store;
mod time;
mod v1alpha1;

pub use cgroup::Cgroups;
pub use client::{connect, Target};
pub use error::DaemonError;
pub use ids::{RandomIds, SequentialIds};
pub use limits::Limits;
pub use output::Stream;
pub use peer::{parse_id_list, PeerPolicy};
pub use prometheus::{
    ExecutionMetrics, LiveFigures, MetricsEndpoint, Outcome, MAX_SCRAPE_CONNECTIONS,
    SCRAPE_HEADER_TIMEOUT,
};
pub use registry::{is_terminal, RegistryDeps, SessionRegistry};
pub use request_counts::RequestCounts;
pub use runtime::process::{ProcessRuntime, ProcessRuntimeConfig, TypeScriptRunner};
pub use runtime::python_zygote::DEFAULT_PRELOAD as PYTHON_DEFAULT_PRELOAD;
pub use runtime::run_as::check_reachable_by_all;
pub use runtime::sandbox::Unenforceable;
pub use runtime::scripted::ScriptedRuntime;
pub use runtime::MAX_COMMANDS_PER_EXECUTION;
pub use runtime::{
    ExitInfo, KernelLimit, LanguageRuntime, MemoryEnforcement, Metrics, Program, ProgramControl,
    ProgramEvent, ProgramSpec, Runtime, RuntimeError,
};
pub use server::{serve, ListenOptions};
pub use service::DaemonService;
pub use store::{FsStore, MemoryStore, StateStore};
