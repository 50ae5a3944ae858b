//! Deterministic simulation of the project under `turmoil`: a fake Nomad
//! cluster running the production driver and daemon.
//!
//! Per simulated client there are three hosts: a fake Nomad agent
//! (`nomad`), the driver plugin (`plugin_host`) and its daemon
//! (`daemon_host`). Only the transport (`net`), the clock, the
//! daemon's runtime (scripted, recorded as `truth`) and the disks
//! (`files`, `logs`, the daemon's `MemoryStore`) are swapped; the
//! logic under test is the production code. A `scenario` is drawn into a
//! `plan` for a seed, `world::run` plays it with its faults, and the
//! `invariants` judge what the agents `observe`d against the ground
//! truth. Same seed, same `trace`, byte for byte.

mod call_errors;
mod connections;
mod daemon_host;
mod daemon_wire;
mod evidence;
mod files;
mod fingerprints;
mod held;
mod inspections;
mod invariants;
mod leftovers;
mod log_readers;
mod logs;
mod net;
mod nomad;
mod observe;
mod operator_log;
mod plan;
mod plugin_host;
mod refusals;
mod scenario;
mod signals;
mod task_limits;
mod task_stats;
mod trace;
mod truth;
mod users;
mod world;

pub use daemon_host::DaemonHost;
pub use evidence::Latency;
pub use net::channel;
pub use scenario::Scenario;
pub use trace::Trace;
pub use world::{run as run_scenario, run_logging as run_scenario_logging, RunReport};

use std::time::{Duration, SystemTime};

/// A turmoil builder with everything that makes a run replayable fixed:
/// the seed, the epoch, and a generous duration backstop.
pub fn builder(seed: u64, duration: Duration) -> turmoil::Builder {
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(duration)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(10_000);
    b
}
